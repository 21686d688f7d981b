// Workers: a page (or a Node process) serves jobs.
//
//   class Thumbnail extends Worker { subjects = ["img.thumb"]; concurrency = 2;
//     async handle(job) { job.progress(0.5); return {ok: true}; } }
//   const running = runWorker("ws://127.0.0.1:7701", new Thumbnail());
//
// The runner says Hello as a worker with the subjects as patterns and `concurrency` as its
// credit; each Result or Nack frees a slot, so no Credit is sent after that. A job's
// `signal` is aborted when the leader cancels it (its Result is then replaced by a Nack),
// and when the connection is lost (the leader gives the job to another worker). `stop()`
// (and `pagehide` in a browser) gives every job in hand back at once with a Nack, so
// that it is redelivered now rather than after the ack timeout. A long job keeps its lease
// by calling `job.progress(...)` within the Assign's ack timeout.

import { Connector } from "./client.js";
import { cut, encodePayload, payloadOf } from "./protocol.js";

/** A worker: subclass it with `subjects`, `concurrency` and `async handle(job)`. */
export class Worker {
  /** @type {string[]} the subjects (patterns: `*` and `>` allowed) it serves */
  subjects = [];
  /** @type {number} jobs run at once (its credit) */
  concurrency = 1;

  /**
   * Run one job; what it returns (any CBOR value) is the job's result, what it throws fails
   * the job (`error.name` is the error type, `error.stack` the traceback; `error.final =
   * true`: not to be retried).
   * @param {Job} job @returns {Promise<any>}
   */
  async handle(job) {
    throw new Error(`${this.constructor.name} does not handle ${job.subject}`);
  }
}

/** A job in a worker's hands. */
export class Job {
  /** @param {Record<string, any>} msg the Assign @param {any} payload @param {(fields: Record<string, any>) => void} report */
  constructor(msg, payload, report) {
    /** @type {string} */ this.id = msg.job_id;
    /** @type {string} */ this.subject = msg.subject;
    /** @type {any} */ this.payload = payload;
    /** @type {Record<string, string>} */ this.headers = msg.headers;
    /** @type {number} */ this.attempt = msg.attempt;
    /** @type {number|null} ms the job may still run (its submit's timeout), when it has one */
    this.deadline = msg.deadline == null ? null : msg.deadline * 1000;
    this.controller = new AbortController();
    /** @type {AbortSignal} aborted when the job is cancelled, or its connection lost */
    this.signal = this.controller.signal;
    this.#report = report;
  }

  #report;

  /**
   * Report progress (also extends the job's ack deadline): a fraction from 0 to 1, a note,
   * or both as `{fraction, note}`.
   * @param {number|string|{fraction?: number|null, note?: string|null}} [value]
   */
  progress(value) {
    if (this.signal.aborted) return;
    /** @type {{fraction?: number|null, note?: string|null}} */
    const fields = typeof value === "number" ? { fraction: value } : typeof value === "string" ? { note: value } : value ?? {};
    const fraction = fields.fraction == null ? null : Math.min(1, Math.max(0, Number(fields.fraction)));
    this.#report({ job_id: this.id, fraction: Number.isFinite(fraction) ? fraction : null, note: fields.note ?? null });
  }
}

/**
 * @typedef {object} RunningWorker
 * @property {() => Promise<void>} stop give the jobs in hand back (Nack), say Bye and close
 * @property {Promise<Error|null>} closed resolves once stopped (null) or given up (why)
 * @property {Promise<void>} ready resolves once first connected (rejects like Client.connect)
 * @property {() => AsyncIterableIterator<any>} status connection events, as Client.status()
 */

/**
 * Run `worker` against the leader at `url` until stopped; reconnects as the client does.
 * @param {string} url @param {Worker} worker
 * @param {import("./client.js").ConnectOptions & {group?: string}} [options]
 * @returns {RunningWorker}
 */
export function runWorker(url, worker, options = {}) {
  const concurrency = Math.max(1, Math.floor(worker.concurrency ?? 1));
  const patterns = [...(worker.subjects ?? [])];
  if (!patterns.length) throw new TypeError(`${worker.constructor.name} serves no subjects`);
  // running: job id -> its entry; `to` lists the Assigns ([cid, link]) its outcome answers
  // (a duplicate Assign of a job running here adds one). An entry whose connection was lost
  // is an orphan: its handler may still run (one that ignores its signal); it holds a slot,
  // so the next Hello offers that much less credit, and its outcome is kept in `finished`
  // for a redelivery of the same job.
  /** @typedef {{job: Job, to: Array<[number, any]>, orphan: boolean, why: string|null}} Entry */
  /** @type {Map<string, Entry>} */
  const running = new Map();
  /** @type {Map<string, Record<string, any>>} outcomes sent or kept, newest last (bounded) */
  const finished = new Map();
  let stopping = false;
  const orphans = () => [...running.values()].filter((e) => e.orphan).length;
  const connector = new Connector(url, {
    ...options,
    hello: (token) => ({ role: "worker", name: options.name ?? worker.constructor.name, token, patterns, credit: Math.max(0, concurrency - orphans()), group: options.group ?? null }),
    onMessage: (msg, link) => {
      if (msg.kind === "Assign") assign(msg, link);
      else if (msg.kind === "Cancel") {
        const entry = running.get(msg.job_id);
        if (entry && !entry.orphan) { entry.why = "cancelled"; entry.job.controller.abort(new DOMException(`cancelled by the leader${msg.reason ? `: ${msg.reason}` : ""}`, "AbortError")); }
      } else if (msg.kind === "Deliver" && typeof (/** @type {any} */ (worker).onMessage) === "function") {
        const status = (/** @type {any} */ exc) => connector.emit(/** @type {any} */ ({ type: "message_failed", subject: msg.subject, error: exc }));
        try {
          const out = /** @type {any} */ (worker).onMessage({ subject: msg.subject, payload: payloadOf(msg), headers: msg.headers });
          if (out && typeof out.then === "function") out.then(null, status);
        } catch (exc) { status(exc); } // (a message it could not take is dropped)
      }
    },
    onConnected: () => {},
    onDisconnected: () => abortAll("connection lost"),
    onFailure: () => abortAll("worker gave up"),
  });

  /** @param {string} why */
  function abortAll(why) {
    for (const entry of running.values()) {
      entry.orphan = true;
      entry.to = []; // (the leader redelivers the job: whoever gets it answers)
      entry.job.controller.abort(new DOMException(why, "AbortError"));
    }
  }

  /** Credit back for orphans gone: the window is the slots not held by orphans. */
  function credit() {
    const link = connector.link;
    if (link && !link.isClosed && !stopping) link.send("Credit", { credit: Math.max(0, concurrency - orphans()) });
  }

  /** @param {Record<string, any>} msg @param {import("./client.js").Link} link */
  function assign(msg, link) {
    const entry = running.get(msg.job_id);
    if (entry) { // running here already: it answers this Assign too
      entry.to.push([msg.mid, link]);
      if (entry.orphan) { entry.orphan = false; credit(); }
      return;
    }
    const done = finished.get(msg.job_id);
    if (done) return void send(link, msg.mid, msg.job_id, done);
    if (stopping || running.size >= concurrency) {
      link.send("Nack", { cid: msg.mid, job_id: msg.job_id, delay: 0, reason: stopping ? "worker stopping" : "no free slot" });
      return;
    }
    let payload;
    try {
      payload = payloadOf(msg);
    } catch (exc) {
      link.send("Result", { cid: msg.mid, job_id: msg.job_id, ok: false, error_type: "InvalidPayload", error_message: cut(/** @type {Error} */ (exc).message, 4096), attempts: msg.attempt, final: true });
      return;
    }
    /** @type {Entry} */
    const e = { job: /** @type {any} */ (null), to: [[msg.mid, link]], orphan: false, why: null };
    const job = new Job(msg, payload, (fields) => {
      const l = connector.link;
      if (running.get(job.id) === e && !e.orphan && l && !l.isClosed) l.send("Progress", fields);
    });
    e.job = job;
    running.set(job.id, e);
    /** @type {any} */ let deadline;
    if (job.deadline != null) {
      // Past it nobody waits: answered at once (a handler that ignores its signal is not waited for).
      deadline = setTimeout(() => { e.why ??= "deadline"; job.controller.abort(new DOMException("the job's deadline passed", "TimeoutError")); answer(e, {}); }, job.deadline);
    }
    Promise.resolve()
      .then(() => worker.handle(job))
      .then(
        (value) => answer(e, { ok: true, payload: value === undefined || value === null ? null : encodePayload(value) }),
        (error) => answer(e, {
          ok: false, error_type: String(error?.name ?? "Error"), error_message: cut(String(error?.message ?? error), 4096),
          traceback: error?.stack ? cut(String(error.stack), 64 * 1024) : null, final: error?.final === true,
        }),
      )
      .catch((exc) => answer(e, { ok: false, error_type: "EncodeError", error_message: cut(`the job's result cannot be sent: ${exc?.message ?? exc}`, 4096), final: true }))
      .finally(() => clearTimeout(deadline));
  }

  /** @param {Entry} entry @param {Record<string, any>} outcome */
  function answer(entry, outcome) {
    const { job } = entry;
    if (running.get(job.id) !== entry) return; // given back (stop)
    running.delete(job.id);
    if (entry.why === "deadline") {
      // Nobody waits for it any more: a final failure, as the Python worker sends.
      outcome = { ok: false, error_type: "DeadlineExceeded", error_message: `job ${job.id} ran past its deadline (${job.deadline} ms)`, final: true };
    } else if (entry.why === "cancelled" || (job.signal.aborted && !outcome.ok && !outcome.final)) {
      // Cancelled, or failed once its connection was lost: given back, not a failed attempt.
      for (const [cid, link] of entry.to) if (!link.isClosed) link.send("Nack", { cid, job_id: job.id, reason: entry.why ?? "connection lost" });
      if (entry.orphan) credit();
      return;
    }
    outcome = { attempts: job.attempt, ...outcome };
    finished.delete(job.id);
    finished.set(job.id, outcome);
    if (finished.size > 1000) finished.delete(/** @type {string} */ (finished.keys().next().value));
    for (const [cid, link] of entry.to) send(link, cid, job.id, outcome);
    if (entry.orphan) credit();
  }

  /** @param {any} link @param {number} cid @param {string} jobId @param {Record<string, any>} outcome */
  function send(link, cid, jobId, outcome) {
    if (link.isClosed) return;
    try {
      link.send("Result", { cid, job_id: jobId, ...outcome });
    } catch (exc) { // over the leader's frame limit: fail the job, final
      link.send("Result", { cid, job_id: jobId, attempts: outcome.attempts, ok: false, error_type: "TooLarge", error_message: cut(/** @type {Error} */ (exc).message), final: true });
    }
  }

  /** @param {any} [reason] */
  async function stop(reason) {
    if (stopping) return connector.closed.then(() => {});
    stopping = true;
    const link = connector.link;
    if (link && !link.isClosed) {
      link.send("Credit", { credit: 0 });
      for (const { job, to } of running.values()) {
        for (const [cid, l] of to) if (l === link) link.send("Nack", { cid, job_id: job.id, delay: 0, reason: "worker stopping" });
        job.controller.abort(new DOMException("worker stopping", "AbortError"));
      }
    }
    running.clear();
    await connector.close(reason);
  }

  const pagehide = () => { void stop(); };
  const target = /** @type {any} */ (globalThis);
  if (typeof target.addEventListener === "function") target.addEventListener("pagehide", pagehide);
  const signal = options.signal;
  const ready = connector.start();
  ready.catch(() => {});
  if (signal?.aborted) void stop(signal.reason);
  else signal?.addEventListener("abort", () => void stop(signal.reason), { once: true });
  connector.closed.then(() => target.removeEventListener?.("pagehide", pagehide));
  return {
    stop,
    closed: connector.closed,
    ready,
    status: () => connector.status(),
  };
}
