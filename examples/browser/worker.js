// worker.html: this tab serves jobs. A Worker subclass with `subjects`, `concurrency` and
// `async handle(job)`, run by runWorker; each job it takes gets a row.
import { Worker, runWorker } from "/actors.js";
import { addRow, followStatus, leaderUrl, show, showStatus } from "/examples/page.js";

const $ = (id) => document.getElementById(id);
/** @type {{stop: () => Promise<void>, ready: Promise<void>, status: () => AsyncIterable<any>}|null} */
let running = null;
let served = 0;

/** Wait `ms`, or throw the signal's reason once it is aborted (the job was cancelled). */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    signal.throwIfAborted();
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}

class Upper extends Worker {
  subjects = ["browser.upper"];
  concurrency = 2;
  duration = 2000;

  async handle(job) {
    const [idCell, , , progressCell, outcome] = addRow($("jobs"), `#${++served} ${job.id.slice(0, 8)}`, String(job.attempt), show(job.payload), "", "running");
    idCell.title = job.id;
    const bar = progressCell.appendChild(document.createElement("progress"));
    try {
      if (typeof job.payload !== "string") {
        const error = new TypeError(`expected a text payload, not ${show(job.payload)}`);
        error.final = true; // (not worth retrying)
        throw error;
      }
      for (let step = 1; step <= 5; step++) {
        await sleep(this.duration / 5, job.signal);
        bar.value = step / 5;
        job.progress({ fraction: step / 5, note: `step ${step} of 5` });
      }
      const result = job.payload.toUpperCase();
      outcome.textContent = show(result);
      outcome.className = "ok";
      return result;
    } catch (error) {
      outcome.textContent = job.signal.aborted ? `given back: ${job.signal.reason?.message ?? "cancelled"}` : `${error.name}: ${error.message}`;
      outcome.className = "error";
      throw error;
    }
  }
}

async function start() {
  const worker = new Upper();
  worker.subjects = [$("subject").value.trim()];
  worker.concurrency = Math.max(1, Number($("concurrency").value) || 1);
  worker.duration = Math.max(0, Number($("duration").value) || 0);
  const url = $("url").value.trim();
  $("start").disabled = true;
  showStatus(`connecting to ${url}`, "connecting");
  running = runWorker(url, worker, { name: "worker.html" });
  followStatus(running.status());
  try {
    await running.ready;
  } catch (error) {
    showStatus(`${error.name}: ${error.message}`, "failed");
    running = null;
    $("start").disabled = false;
    return;
  }
  showStatus(`serving ${worker.subjects[0]} on ${url}`, "connected");
  $("stop").disabled = false;
}

async function stop() {
  $("stop").disabled = true;
  await running?.stop();
  running = null;
  showStatus("stopped", "closed");
  $("start").disabled = false;
}

$("url").value = leaderUrl();
$("run").onsubmit = (event) => { event.preventDefault(); start(); };
$("stop").onclick = stop;
if ($("url").value && new URLSearchParams(location.search).get("start") !== "no") start();
else if (!$("url").value) showStatus("no leader: type its ws:// URL", "failed");
