// The leader is stopped and started again mid-run: every result still arrives, once.
// (waitForWorker: a leader that just started has no workers yet; jobs sent before the
// restart are resent so by the client itself, new ones need it.)
import { Client } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

const n = Number(process.env.JOBS ?? 400);
const client = await Client.connect(process.env.ACTORS_URL, { name: "e2e-restart", reconnect: { base: 50, cap: 500 } });
const events = [];
(async () => { for await (const e of client.status()) events.push(e.type); })();
let i = 0;
for await (const r of client.map("math.slow", (function* () { for (let k = 0; k < n; k++) yield { n: k }; })(), { limit: 64, waitForWorker: true, timeout: 30000 })) {
  if (r !== i * i) throw new Error(`job ${i}: got ${r}`);
  i++;
  if (i === 100) console.log("progress 100");
}
if (i !== n) throw new Error(`${i} of ${n}`);
if (client.connects < 2) throw new Error(`no reconnect happened (connects ${client.connects})`);
if (!events.includes("reconnecting")) throw new Error(`events: ${events}`);
await client.close();
console.log(`OK ${n} jobs across ${client.connects} connections`);
