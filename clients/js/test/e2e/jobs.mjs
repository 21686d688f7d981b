// 1,000 jobs to Python workers (math.square), 64 in flight: each result exactly once.
import { Client } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

const client = await Client.connect(process.env.ACTORS_URL, { name: "e2e-jobs" });
const n = Number(process.env.JOBS ?? 1000);
const seen = new Map();
let i = 0;
for await (const r of client.map("math.square", (function* () { for (let k = 0; k < n; k++) yield { n: k }; })(), { limit: 64 })) {
  if (r !== i * i) throw new Error(`job ${i}: got ${r}, expected ${i * i}`);
  seen.set(i, (seen.get(i) ?? 0) + 1);
  i++;
}
// The handle form: ids given, each result once, progress iterates.
const handles = Array.from({ length: 64 }, (_, k) => client.job("math.square", { n: k }, { jobId: `h-${k}` }));
const results = await Promise.all(handles.map((h) => h.result));
if (results.some((r, k) => r !== k * k)) throw new Error("handle results wrong");
if (i !== n || [...seen.values()].some((c) => c !== 1)) throw new Error(`results: ${i} of ${n}`);
// enqueue, then the result by id (another call, as another page would).
const id = await client.enqueue("math.square", { n: 12 }, { jobId: "enq-1" });
if (id !== "enq-1" || (await client.result(id, { wait: true })) !== 144) throw new Error("enqueue/result");
const stats = await client.stats();
if (!stats.subjects?.["math.square"]) throw new Error(`stats: ${Object.keys(stats)}`);
if (client.strayResults) throw new Error(`${client.strayResults} stray results`);
await client.close();
console.log(`OK ${n} jobs`);
