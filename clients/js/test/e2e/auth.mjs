// Token auth: a static token, a provider (async), and a wrong token (AuthFailed).
import { AuthFailed, Client } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

const url = process.env.ACTORS_URL;
const token = process.env.ACTORS_TOKEN;
const a = await Client.connect(url, { token });
if ((await a.submit("math.square", { n: 3 })) !== 9) throw new Error("static");
await a.close();
let asked = 0;
const b = await Client.connect(url, { token: async () => { asked++; return token; } });
if ((await b.submit("math.square", { n: 4 })) !== 16 || asked !== 1) throw new Error("provider");
await b.close();
for (const wrong of ["nope", () => "nope"]) {
  try {
    await Client.connect(url, { token: wrong, reconnect: { base: 10, cap: 20 } });
    throw new Error("a wrong token was accepted");
  } catch (exc) {
    if (!(exc instanceof AuthFailed)) throw exc;
    console.log(`refused: ${exc.message}`);
  }
}
try {
  await Client.connect(url);
  throw new Error("no token was accepted");
} catch (exc) {
  if (!(exc instanceof AuthFailed)) throw exc;
}
console.log("OK auth");
