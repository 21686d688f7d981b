// Publish/subscribe both ways: a retained message from Python reaches a JS subscriber, a
// JS publish reaches a Python subscriber (js.>), and JS to JS through a queue group.
import { Client } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

const client = await Client.connect(process.env.ACTORS_URL, { name: "e2e-pubsub" });
const fromPy = client.subscribe("py.>");
for await (const m of fromPy) {
  if (m.subject !== "py.hello" || m.payload.from !== "python" || !m.retained) throw new Error(JSON.stringify(m));
  break;
}
const mine = client.subscribe("loop.*", { queue: "q" });
await client.publish("loop.a", { k: 1 }, { qos: 1 });
await client.publish("loop.b", new Uint8Array([1, 2, 3]), { qos: 1, headers: { h: "v" } });
const got = [];
for await (const m of mine) { got.push(m); if (got.length === 2) break; }
if (got[1].payload.length !== 3 || got[1].headers.h !== "v") throw new Error("bytes or headers lost");
// A slow consumer: a buffer of 5, 50 messages: the rest dropped, an event emitted.
const status = client.status();
const slow = client.subscribe("flood", { maxPending: 5 });
await client.publish("flood", 0, { qos: 1 }); // (subscribed by now: the Subscribe went first)
for (let k = 1; k < 50; k++) await client.publish("flood", k);
await client.publish("flood", -1, { qos: 1 });
for await (const e of status) if (e.type === "slow_consumer") break;
if (slow.dropped < 40) throw new Error(`dropped ${slow.dropped}`);
await slow.drain();
let left = 0;
for await (const _ of slow) left++;
if (left !== 5) throw new Error(`drained ${left}`);
await client.publish("js.hello", { from: "js" }, { qos: 1 });
await client.close();
console.log("OK pubsub");
