// A URL that reaches something other than a leader's WebSocket says so.
import { Client, ConnectionRefused, WrongProtocol } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

async function expect(url, Kind) {
  try {
    await Client.connect(url, { connectTimeout: 5000 });
  } catch (exc) {
    if (!(exc instanceof Kind) || (Kind === ConnectionRefused && exc instanceof WrongProtocol)) throw new Error(`${url}: ${exc.name}: ${exc.message}`);
    console.log(`${exc.name}: ${exc.message}`);
    return;
  }
  throw new Error(`${url}: connected`);
}
await expect(process.env.ACTORS_TCP_URL, WrongProtocol);
await expect(process.env.ACTORS_HTTP_URL, WrongProtocol);
await expect(process.env.ACTORS_CLOSED_URL, ConnectionRefused);
console.log("OK wrong urls");
