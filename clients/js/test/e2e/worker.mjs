// A JS worker serves js.echo until it has answered JOBS jobs (a Python client submits them).
import { Worker, runWorker } from "../../actors.js";

if (!process.env.ACTORS_URL && !process.env.ACTORS_TCP_URL) process.exit(0); // (run by tests/test_js_client.py)

const want = Number(process.env.JOBS ?? 200);
let done = 0;
let finish;
const finished = new Promise((r) => { finish = r; });
class Echo extends Worker {
  subjects = ["js.echo", "js.fail"];
  concurrency = 8;
  async handle(job) {
    job.progress({ fraction: 0.5, note: "halfway" });
    await new Promise((r) => setTimeout(r, 1));
    if (++done >= want) setTimeout(finish, 300);
    if (job.subject === "js.fail") throw new RangeError(`no ${job.payload.n}`);
    return { echo: job.payload, attempt: job.attempt, by: "js" };
  }
}
const running = runWorker(process.env.ACTORS_URL, new Echo(), { name: "js-echo" });
await running.ready;
console.log("ready");
await finished;
await running.stop();
console.log(`OK served ${done}`);
