import { test } from "node:test";
import assert from "node:assert/strict";

import { Worker, runWorker } from "../actors.js";
import { FakeWS, encodePayload, payloadOf, refusedFetch, sleep, until } from "./fake.mjs";

const opts = { WebSocket: FakeWS, fetch: refusedFetch, reconnect: { base: 20, cap: 40 } };

class Thumb extends Worker {
  subjects = ["img.thumb", "img.fail"];
  concurrency = 2;
  /** @type {Array<any>} */ jobs = [];
  async handle(job) {
    this.jobs.push(job);
    if (job.subject === "img.fail") throw new RangeError("too small");
    job.progress(0.25);
    job.progress("resizing");
    if (job.payload.wait) await new Promise((resolve) => job.signal.addEventListener("abort", resolve));
    return { w: job.payload.w / 2, attempt: job.attempt };
  }
}

test("worker: Hello as a worker, results, failures, cancel, stop gives jobs back", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const worker = new Thumb();
  const running = runWorker("ws://leader", worker, { ...opts, name: "thumbs", group: "g" });
  await running.ready;
  const ws = FakeWS.instances[0];
  assert.equal(ws.hello.role, "worker");
  assert.deepEqual(ws.hello.patterns, ["img.thumb", "img.fail"]);
  assert.equal(ws.hello.credit, 2);
  assert.equal(ws.hello.group, "g");

  ws.deliver("Assign", { job_id: "a", subject: "img.thumb", payload: encodePayload({ w: 100 }), attempt: 2, headers: { k: "v" } });
  await until(() => ws.sent.some((m) => m.kind === "Result"));
  const result = ws.sent.find((m) => m.kind === "Result");
  assert.equal(result.job_id, "a");
  assert.equal(result.cid, 2); // (the Welcome was mid 1)
  assert.equal(result.attempts, 2);
  assert.deepEqual(payloadOf(result), { w: 50, attempt: 2 });
  assert.deepEqual(ws.sent.filter((m) => m.kind === "Progress").map((m) => [m.fraction, m.note]), [[0.25, null], [null, "resizing"]]);
  assert.equal(worker.jobs[0].headers.k, "v");

  ws.deliver("Assign", { job_id: "b", subject: "img.fail", payload: encodePayload({}) });
  await until(() => ws.sent.filter((m) => m.kind === "Result").length === 2);
  const failed = ws.sent.filter((m) => m.kind === "Result")[1];
  assert.equal(failed.ok, false);
  assert.equal(failed.error_type, "RangeError");
  assert.equal(failed.error_message, "too small");
  assert.match(failed.traceback, /too small/);

  // Cancel: the job's signal aborts, and it is answered with a Nack.
  ws.deliver("Assign", { job_id: "c", subject: "img.thumb", payload: encodePayload({ w: 8, wait: true }) });
  await until(() => worker.jobs.length === 3);
  ws.deliver("Cancel", { job_id: "c", reason: "user" });
  await until(() => ws.sent.some((m) => m.kind === "Nack" && m.job_id === "c"));
  assert.equal(worker.jobs[2].signal.aborted, true);

  // Past its credit: a Nack at once, not run.
  ws.deliver("Assign", { job_id: "d", subject: "img.thumb", payload: encodePayload({ w: 8, wait: true }) });
  ws.deliver("Assign", { job_id: "e", subject: "img.thumb", payload: encodePayload({ w: 8, wait: true }) });
  ws.deliver("Assign", { job_id: "f", subject: "img.thumb", payload: encodePayload({ w: 8, wait: true }) });
  await until(() => ws.sent.some((m) => m.kind === "Nack" && m.job_id === "f"));
  assert.equal(ws.sent.find((m) => m.kind === "Nack" && m.job_id === "f").reason, "no free slot");

  // stop(): Credit 0, the jobs in hand given back at once (delay 0), Bye.
  await running.stop();
  const tail = ws.sent.slice(-4);
  assert.deepEqual(tail.map((m) => m.kind), ["Credit", "Nack", "Nack", "Bye"]);
  assert.equal(tail[0].credit, 0);
  assert.deepEqual(tail.slice(1, 3).map((m) => [m.job_id, m.delay]), [["d", 0], ["e", 0]]);
  assert.equal(await running.closed, null);
  await sleep(5);
  assert.equal(ws.sent.filter((m) => m.kind === "Result").length, 2, "no result sent for jobs given back");
});

test("worker: a lost connection aborts the jobs in hand and reconnects", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const worker = new Thumb();
  const running = runWorker("ws://leader", worker, opts);
  await running.ready;
  FakeWS.instances[0].deliver("Assign", { job_id: "x", subject: "img.thumb", payload: encodePayload({ w: 8, wait: true }) });
  await until(() => worker.jobs.length === 1);
  FakeWS.instances[0].drop();
  await until(() => FakeWS.instances.length === 2 && FakeWS.instances[1].hello);
  assert.equal(worker.jobs[0].signal.aborted, true);
  assert.equal(FakeWS.instances[1].hello.credit, 2);
  await running.stop();
});

test("worker: a duplicate Assign is answered when the running attempt ends; orphans lower the credit; deadline fails final", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  /** @type {Array<() => void>} */ const release = [];
  class Stubborn extends Worker {
    subjects = ["s.>"];
    concurrency = 2;
    async handle(job) {
      if (job.subject === "s.deadline") return new Promise(() => {});
      await new Promise((r) => release.push(r)); // ignores its signal
      return job.id;
    }
  }
  const running = runWorker("ws://leader", new Stubborn(), opts);
  await running.ready;
  const ws = FakeWS.instances[0];
  ws.deliver("Assign", { job_id: "d", subject: "s.x" });
  ws.deliver("Assign", { job_id: "d", subject: "s.x", attempt: 2 });
  await until(() => release.length === 1);
  assert.ok(!ws.sent.some((m) => m.kind === "Nack"));
  release.shift()();
  await until(() => ws.sent.filter((m) => m.kind === "Result").length === 2);
  assert.deepEqual(ws.sent.filter((m) => m.kind === "Result").map((m) => m.cid), [2, 3]);
  // An orphan: the connection drops under a handler that goes on; the next Hello has credit 1.
  ws.deliver("Assign", { job_id: "o", subject: "s.x" });
  await until(() => release.length === 1);
  ws.drop();
  await until(() => FakeWS.instances.length === 2 && FakeWS.instances[1].hello);
  const ws2 = FakeWS.instances[1];
  assert.equal(ws2.hello.credit, 1);
  release.shift()(); // it ends late: kept, then a redelivery is answered from it
  await until(() => ws2.sent.some((m) => m.kind === "Credit"));
  assert.equal(ws2.sent.find((m) => m.kind === "Credit").credit, 2);
  ws2.deliver("Assign", { job_id: "o", subject: "s.x", attempt: 2 });
  await until(() => ws2.sent.some((m) => m.kind === "Result"));
  assert.equal(payloadOf(ws2.sent.find((m) => m.kind === "Result")), "o");
  assert.equal(release.length, 0);
  // Past its deadline: a final DeadlineExceeded failure, not a Nack.
  ws2.deliver("Assign", { job_id: "late", subject: "s.deadline", deadline: 0.02 });
  await until(() => ws2.sent.some((m) => m.kind === "Result" && m.job_id === "late"));
  const late = ws2.sent.find((m) => m.job_id === "late");
  assert.equal(late.error_type, "DeadlineExceeded");
  assert.equal(late.final, true);
  await running.stop();
});

test("worker: stopped before connecting: ready rejects", async () => {
  FakeWS.instances = [];
  FakeWS.behave = () => {};
  class W extends Worker { subjects = ["x"]; }
  const running = runWorker("ws://leader", new W(), opts);
  await sleep(5);
  await running.stop();
  await assert.rejects(running.ready, /closed before connecting/);
});
