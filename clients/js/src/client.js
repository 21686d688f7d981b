// The Client: submit jobs, map over many, publish and subscribe, over one WebSocket.
//
// Every call shares one connection. The client reconnects with capped exponential backoff
// and full jitter, one attempt at a time (at once on `online`, `pageshow` and a page made
// visible), and then sends again every QoS 1 submit still waiting, under the same job id:
// the leader merges it with the running job or answers from its stored results, so each
// call gets its outcome exactly once. Subscriptions are renewed too. Liveness: nothing
// heard for a heartbeat, it pings; nothing heard for 3, the connection is dead. A closing
// Error from the leader ends the connection at once, and one that a call may have caused
// (bad_field, internal...) settles the calls sent on it with ConnectionLost, never resent.
//
// Durations in this API are milliseconds (the wire's seconds are converted).

import { Backoff } from "./backoff.js";
import {
  bundleFrames, checkFields, decodeFrame, encodeItem, encodeMessage, encodePayload, payloadOf,
  BUNDLE_OVERHEAD, BUNDLE_VERSION, CLOSING_CODES, DEFAULT_MAX_FRAME, MAX_BUNDLE_ITEMS, VERSIONS, cut,
} from "./protocol.js";
import {
  AuthFailed, Busy, ClientError, ConnectionLost, ConnectionRefused, DeadLettered, JobCancelled, JobFailed,
  ProtocolError, RemoteError, SubmitTimeout, TooLarge, WrongProtocol, errorOf,
} from "./errors.js";

/** @typedef {import("./errors.js").ErrorFields} ErrorFields */

/** Bytes the WebSocket may buffer before sends wait (`bufferedAmount`). */
export const HIGH_WATER = 1024 * 1024;
/** Heartbeats missed before a connection is dead. */
export const MISSED_HEARTBEATS = 3;
/**
 * Microtask hops with no new message before a link sends what was queued (see Link.send):
 * more than the few hops between two sends of one chain of awaits (`map` takes about 6).
 */
export const QUIET_HOPS = 16;
/** Hops at most before what was queued goes out anyway (a caller that never stops sending). */
const MAX_HOPS = 1024;
const MAX_QUEUED_CANCELS = 100_000;
/** Codes after which the calls sent on the connection are not sent again: they may be the cause. */
const POISON = new Set(["bad_field", "bad_subject", "unknown_kind", "protocol_violation", "frame_too_large", "internal"]);

/** A random UUID (v4), also where crypto.randomUUID is missing (a page not served over https). */
export function uuid() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * @typedef {string | (() => string | Promise<string>)} TokenSource
 * @typedef {{type: "connecting", attempt: number} | {type: "connected", url: string, version: number, heartbeat: number|null}
 *   | {type: "disconnected", error: Error|null} | {type: "reconnecting", delay: number, attempt: number}
 *   | {type: "closed", error: Error|null} | {type: "slow_consumer", sid: number, pattern: string, dropped: number}
 *   | {type: "message_failed", subject: string, error: any}} StatusEvent (the last: a worker's onMessage threw or rejected)
 */

// ------------------------------------------------------------------ a bounded async queue

/**
 * A bounded queue read as an async iterator (for subscriptions, progress, status).
 * @template T
 */
export class Channel {
  /** @param {number} limit @param {boolean} [dropOldest] */
  constructor(limit, dropOldest = false) {
    this.limit = limit;
    this.dropOldest = dropOldest;
    /** @type {T[]} */ this.items = [];
    /** @type {Array<{resolve: Function, reject: Function}>} */ this.readers = [];
    this.ended = false;
    /** @type {Error|null} */ this.error = null;
    /** Items refused or dropped for a full buffer. */
    this.dropped = 0;
  }

  /** Queue `item`; false when the buffer is full (the item, or the oldest, is dropped). @param {T} item */
  push(item) {
    if (this.ended) return false;
    const reader = this.readers.shift();
    if (reader) {
      reader.resolve({ value: item, done: false });
      return true;
    }
    if (this.items.length >= this.limit) {
      this.dropped++;
      if (!this.dropOldest) return false;
      this.items.shift();
      this.items.push(item);
      return false;
    }
    this.items.push(item);
    return true;
  }

  /** End the queue: readers get what is buffered, then `error` (thrown) or the end. @param {Error|null} [error] */
  end(error = null) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    for (const reader of this.readers.splice(0)) {
      if (error) reader.reject(error);
      else reader.resolve({ value: undefined, done: true });
    }
  }

  /** @returns {Promise<IteratorResult<T>>} */
  next() {
    if (this.items.length) return Promise.resolve({ value: /** @type {T} */ (this.items.shift()), done: false });
    if (this.ended) {
      const error = this.error;
      this.error = null;
      return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.readers.push({ resolve, reject }));
  }

  /** @returns {Promise<IteratorResult<T>>} */
  return() {
    this.items = [];
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

// ------------------------------------------------------------------ one connection

/** A refusal of the Hello by the leader (an Error answering it). */
export class HandshakeError extends ClientError {
  /** @param {string} code @param {string} message @param {number|null} retryAfter */
  constructor(code, message, retryAfter) {
    super(`${code}: ${message}`);
    this.code = code;
    this.reason = message;
    this.retryAfter = retryAfter;
  }
}

/**
 * Why a WebSocket to `url` failed to open, found by asking the same address over HTTP:
 * an HTTP answer means an HTTP server (not a leader's WebSocket); a non-HTTP answer, the
 * leader's TCP listener or another service; a refusal, nothing there.
 * @param {string} url @param {typeof fetch|undefined} fetchFn @returns {Promise<ConnectionLost>}
 */
export async function explainFailure(url, fetchFn) {
  const http = url.replace(/^ws/, "http");
  const vague = new ConnectionRefused(`could not connect to ${url}: no WebSocket opened there (nothing listens, or what listens is not a leader's WebSocket listener: its TCP port, an HTTP server?)`);
  if (typeof fetchFn !== "function") return vague;
  try {
    const response = await fetchFn(http, { redirect: "manual", mode: "no-cors", signal: AbortSignal.timeout(3000) });
    const status = response.status ? `HTTP ${response.status}` : "HTTP";
    try { await response.body?.cancel(); } catch { /* nothing to free */ }
    return new WrongProtocol(`could not connect to ${url}: it answered ${status} instead of upgrading to a WebSocket: an HTTP server, not a leader's WebSocket listener (or one that refused this page's Origin)`);
  } catch (exc) {
    const cause = /** @type {any} */ (exc)?.cause;
    const code = String(cause?.code ?? "");
    if (code === "ECONNREFUSED") return new ConnectionRefused(`could not connect to ${url}: connection refused (nothing listens there: is the leader running?)`);
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") return new ConnectionLost(`could not connect to ${url}: cannot resolve its host`);
    if (code.startsWith("HPE_") || code === "UND_ERR_SOCKET") {
      return new WrongProtocol(`could not connect to ${url}: something answers there but not over HTTP or WebSocket (a leader's tcp:// listener? give its ws:// address)`);
    }
    return vague;
  }
}

/**
 * @typedef {object} LinkOptions
 * @property {any} [WebSocket] the WebSocket class (default globalThis.WebSocket)
 * @property {typeof fetch} [fetch] for explaining a failure to open (default globalThis.fetch)
 * @property {Record<string, any>} hello the Hello's fields (without mid)
 * @property {number} [connectTimeout] milliseconds for the socket and the Welcome (default 10000)
 * @property {number} [maxFrame] the largest frame body accepted (default 16 MiB)
 * @property {(msg: Record<string, any>, link: Link) => void} onMessage every message but Ping/Pong (with its link: it may come before open() resolves)
 */

/** One WebSocket connection to a leader, through its handshake. */
export class Link {
  /**
   * Open a connection and say Hello; resolves once the Welcome came.
   * @param {string} url @param {LinkOptions} options @param {(link: Link) => void} [onLink] given the link at once
   * @returns {Promise<Link>}
   */
  static open(url, options, onLink) {
    const link = new Link(url, options);
    onLink?.(link);
    return link.#opened.then(() => link);
  }

  /** @type {Promise<void>} */ #opened;
  /** @type {Function} */ #resolveClosed = () => {};
  /** @type {(error: Error) => void} */ #failOpen = () => {};
  #lastPing = 0;
  #mid = 0;
  /** @type {Uint8Array[]} frames waiting for the socket's buffer */ #queue = [];
  /** @type {Uint8Array[]} bundle items sent this turn, not yet framed */ #items = [];
  #bundling = false;
  #flushQueued = false;
  #flushSeen = 0;
  #flushQuiet = 0;
  #flushHops = 0;
  #pumping = false;
  #lastHeard = Date.now();
  /** @type {any} */ #timer = null;
  /** @type {Array<() => void>} */ #roomWaiters = [];

  /** @param {string} url @param {LinkOptions} options */
  constructor(url, options) {
    this.url = url;
    this.options = options;
    this.maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
    /** The leader's frame limit (from its Welcome). */
    this.peerMaxFrame = DEFAULT_MAX_FRAME;
    /** @type {Record<string, any>|null} */ this.welcome = null;
    /** @type {Error|null} why it closed */ this.error = null;
    this.isClosed = false;
    /** @type {Promise<Error|null>} resolves when the connection is closed, with why */
    this.closed = new Promise((resolve) => { this.#resolveClosed = resolve; });
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") throw new ClientError("no WebSocket class: run Node with --experimental-websocket (Node 20) or pass {WebSocket}");
    this.#opened = new Promise((resolve, reject) => {
      let settled = false;
      const fail = (/** @type {Error} */ error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#close(error);
        reject(error);
      };
      this.#failOpen = fail;
      const timer = setTimeout(() => fail(new ConnectionLost(`could not connect to ${url}: no Welcome within ${options.connectTimeout ?? 10000} ms`)), options.connectTimeout ?? 10000);
      let ws;
      try {
        ws = new WS(url);
      } catch (exc) {
        fail(new ConnectionLost(`could not connect to ${url}: ${/** @type {Error} */ (exc).message}`, { cause: exc }));
        return;
      }
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      let open = false;
      ws.onopen = () => {
        open = true;
        this.send("Hello", { ...options.hello, versions: VERSIONS, max_frame: this.maxFrame });
      };
      ws.onerror = () => {
        if (settled) return;
        if (open) return fail(new ConnectionLost(`connection to ${url} failed during its handshake`));
        settled = true; // (explained below, then rejected)
        clearTimeout(timer);
        explainFailure(url, options.fetch ?? globalThis.fetch).then((error) => { this.#close(error); reject(error); });
      };
      ws.onclose = (/** @type {any} */ event) => {
        if (!settled) {
          const why = open ? `the connection closed before the Welcome (code ${event?.code}${event?.reason ? `: ${event.reason}` : ""})` : "no WebSocket opened";
          fail(open ? new WrongProtocol(`could not connect to ${url}: ${why}: not a leader's WebSocket?`) : new ConnectionRefused(`could not connect to ${url}: ${why}`));
          return;
        }
        this.#close(this.error ?? new ConnectionLost(`connection to ${url} lost (code ${event?.code}${event?.reason ? `: ${event.reason}` : ""})`));
      };
      ws.onmessage = (/** @type {MessageEvent} */ event) => {
        this.#lastHeard = Date.now();
        if (!settled) {
          // The first message must be a Welcome or an Error: anything else is not a leader.
          let msgs;
          try {
            if (typeof event.data === "string") throw new ProtocolError("bad_frame", "a text message");
            msgs = decodeFrame(event.data, { maxFrame: this.maxFrame });
          } catch (exc) {
            return fail(new WrongProtocol(`could not connect to ${url}: what answered does not speak the protocol (${/** @type {Error} */ (exc).message}): not a leader's WebSocket`));
          }
          const first = msgs[0];
          if (first.kind === "Error") return fail(new HandshakeError(first.code, first.message, first.retry_after == null ? null : first.retry_after * 1000));
          if (first.kind !== "Welcome") return fail(new WrongProtocol(`could not connect to ${url}: it answered the Hello with a ${first.kind}, not a Welcome`));
          if ((first.cid != null && first.cid !== 1) || !VERSIONS.includes(first.version)) return fail(new WrongProtocol(`could not connect to ${url}: a Welcome for cid ${first.cid}, version ${first.version} (this client speaks ${VERSIONS})`));
          settled = true;
          clearTimeout(timer);
          this.welcome = first;
          if (first.max_frame) this.peerMaxFrame = first.max_frame;
          this.#bundling = first.version >= BUNDLE_VERSION;
          this.#startLiveness(first.heartbeat);
          resolve();
          if (msgs.length > 1) this.#dispatch(msgs.slice(1));
          return;
        }
        this.#receive(event.data);
        if (this.#pumping) this.#pump(true);
      };
    });
  }

  /** @param {number|null} heartbeat seconds */
  #startLiveness(heartbeat) {
    if (!heartbeat) return;
    const ms = heartbeat * 1000;
    // The protocol's rule: nothing heard for H, ask (a Ping, at most one per H; what this
    // side sends does not count); nothing heard for 3H, the leader is dead.
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (now - this.#lastHeard > MISSED_HEARTBEATS * ms) {
        this.abort(new ConnectionLost(`connection to ${this.url} dead: nothing heard from the leader for ${MISSED_HEARTBEATS} heartbeats (${MISSED_HEARTBEATS * heartbeat} s)`), "heartbeat_timeout");
      } else if (now - this.#lastHeard >= ms && now - this.#lastPing >= ms) {
        this.#lastPing = now;
        this.ping();
      }
    }, ms / 4);
    this.#timer?.unref?.();
  }

  /** Ask the leader for a sign of life (a page woken up: an old socket may be a zombie). */
  ping() {
    if (!this.isClosed) this.send("Ping", {});
  }

  /** @param {any} data */
  #receive(data) {
    let msgs;
    try {
      if (typeof data === "string") throw new ProtocolError("bad_frame", "a text message (every message must be binary)");
      msgs = decodeFrame(data, { maxFrame: this.maxFrame });
    } catch (exc) {
      const error = exc instanceof ProtocolError ? exc : new ProtocolError("bad_frame", String(exc));
      this.abort(new ConnectionLost(`connection to ${this.url} closed: the leader sent a bad frame (${error.message})`, { cause: error }), error.code, error.message);
      return;
    }
    this.#dispatch(msgs);
  }

  /** @param {Array<Record<string, any>>} msgs */
  #dispatch(msgs) {
    for (const msg of msgs) {
      if (this.isClosed) return;
      if (msg.kind === "Ping") this.send("Pong", { cid: msg.mid });
      else if (msg.kind === "Pong") continue;
      else if (msg.kind === "Error" && (CLOSING_CODES.has(msg.code) || (msg.code === "internal" && msg.cid == null))) {
        // The leader closes after it: so does this side, at once.
        const error = msg.code === "auth_failed" ? new HandshakeError(msg.code, msg.message, null) : new ConnectionLost(`connection to ${this.url} closed by the leader: ${msg.code}: ${msg.message}`);
        if (POISON.has(msg.code)) /** @type {any} */ (error).poisoned = msg.code;
        this.#close(error);
        return;
      } else if (msg.kind === "Bye") {
        this.#close(new ConnectionLost(`connection to ${this.url} ended by the leader${msg.reason ? `: ${msg.reason}` : ""}`));
        return;
      } else {
        try {
          this.options.onMessage(msg, this);
        } catch (exc) {
          this.abort(new ConnectionLost(`connection to ${this.url} closed: handling a ${msg.kind} failed: ${/** @type {Error} */ (exc).message}`, { cause: exc }), "internal", "client failure");
          return;
        }
      }
    }
  }

  /**
   * Queue message `kind` (fields without mid); sent in order, waiting while the socket
   * buffers more than HIGH_WATER bytes. Returns the message's mid.
   *
   * Once the leader's Welcome allows bundles (version 2), the messages sent while the
   * microtasks of one task run go out together, as few bundles as the leader's frame limit
   * allows: a queued microtask sends them once QUIET_HOPS hops in a row brought no new one.
   * So 64 submits, the next submits of callers woken by one frame of Results, `map`'s
   * refills (a chain of awaits: one microtask hop alone would send each of them in a frame
   * of its own), a worker's Results and Credit make one WebSocket message, not 64.
   * Measured with bench/bench_browser.py (README, JavaScript): a page's jobs/s went from
   * 0.16x the Python client's to 0.32-0.44x; through map (1 job a frame before, about 40
   * now; a single hop gave 1) from 0.17x to 0.50-0.57x.
   * @param {string} kind @param {Record<string, any>} fields @returns {number}
   * @throws {TooLarge} over the leader's frame limit (nothing is sent)
   */
  send(kind, fields) {
    const mid = ++this.#mid;
    if (this.#bundling) {
      const item = encodeItem(kind, { ...fields, mid });
      this.#checkSize(kind, item.length + BUNDLE_OVERHEAD);
      if (this.isClosed) return mid;
      this.#items.push(item);
      if (!this.#flushQueued) {
        this.#flushQueued = true;
        queueMicrotask(this.#flush);
      }
      return mid;
    }
    const frame = encodeMessage(kind, { ...fields, mid });
    this.#checkSize(kind, frame.length - 5);
    if (this.isClosed) return mid;
    this.#queue.push(frame);
    this.#pump();
    return mid;
  }

  /** @param {string} kind @param {number} size */
  #checkSize(kind, size) {
    if (size > this.peerMaxFrame) {
      throw new TooLarge(`a ${kind} of ${size} bytes is over the leader's frame limit of ${this.peerMaxFrame} bytes`, { size, limit: this.peerMaxFrame });
    }
  }

  #flush = () => {
    const queued = this.#items.length;
    if (queued !== this.#flushSeen) {
      this.#flushSeen = queued;
      this.#flushQuiet = 0;
    } else this.#flushQuiet++;
    if (this.#flushQuiet < QUIET_HOPS && ++this.#flushHops < MAX_HOPS && queued < MAX_BUNDLE_ITEMS && !this.isClosed) {
      queueMicrotask(this.#flush);
      return;
    }
    this.#flushQueued = false;
    this.#flushSeen = this.#flushQuiet = this.#flushHops = 0;
    this.#pump();
  };

  /** Whether the socket and this link's queue have room (sends would not wait; the items of this turn do not count). */
  get hasRoom() {
    return !this.#queue.length && (this.ws?.bufferedAmount ?? 0) <= HIGH_WATER;
  }

  /** Sends what this turn queued, then resolves once the outgoing queue has drained below the bound (or the link closed). @returns {Promise<void>} */
  room() {
    if (this.#items.length) this.#pump();
    if (this.hasRoom || this.isClosed) return Promise.resolve();
    return new Promise((resolve) => { this.#roomWaiters.push(resolve); this.#pump(); });
  }

  /** @type {any} */ #poll = null;
  #pollMs = 10;

  /** @param {boolean} [kick] a message came in: look at bufferedAmount again now */
  #pump(kick = false) {
    if (this.#pumping && !kick) return;
    this.#pumping = true;
    clearTimeout(this.#poll);
    // No drain event on a WebSocket: poll bufferedAmount, from 10 ms up to 250 ms apart
    // (and at once when a message comes in).
    const later = () => {
      this.#poll = setTimeout(step, this.#pollMs);
      this.#pollMs = Math.min(250, this.#pollMs * 2);
    };
    const step = () => {
      while (!this.isClosed) {
        if (!this.#queue.length) {
          if (!this.#items.length) break;
          // (everything sent since the last frame: items queued while the socket was full too)
          this.#queue = bundleFrames(this.#items, this.peerMaxFrame);
          this.#items = [];
        }
        if ((this.ws?.bufferedAmount ?? 0) > HIGH_WATER) return later();
        this.#pollMs = 10;
        try {
          this.ws.send(/** @type {Uint8Array} */ (this.#queue.shift()));
        } catch (exc) {
          this.abort(new ConnectionLost(`connection to ${this.url} failed to send: ${/** @type {Error} */ (exc).message}`));
          return;
        }
      }
      this.#pumping = false;
      if ((this.ws?.bufferedAmount ?? 0) <= HIGH_WATER || this.isClosed) {
        for (const wake of this.#roomWaiters.splice(0)) wake();
      } else if (this.#roomWaiters.length) {
        this.#pumping = true;
        later();
      }
    };
    step();
  }

  /**
   * Close now, with `error` as why (sending Error `code` first when given).
   * @param {Error} error @param {string} [code] @param {string} [message]
   */
  abort(error, code, message) {
    if (this.isClosed) return;
    if (this.#items.length) this.#pump(); // (what was sent before the error goes first)
    if (code) {
      try {
        const frame = encodeMessage("Error", { mid: ++this.#mid, code, message: cut(message ?? error.message) });
        this.ws?.send(frame);
      } catch { /* closing anyway */ }
    }
    this.#close(error, 4000, code);
  }

  /** Close gracefully: what is queued goes out first (within `timeout` ms), then Bye. @param {string} [reason] @param {number} [timeout] */
  async close(reason = "closed", timeout = 2000) {
    if (this.isClosed) return;
    try { this.send("Bye", { reason: cut(reason) }); } catch { /* closing anyway */ }
    /** @type {any} */ let timer;
    await Promise.race([this.room(), new Promise((r) => { timer = setTimeout(r, timeout); })]);
    clearTimeout(timer);
    this.#close(new ConnectionLost(`connection to ${this.url} closed`), 1000, reason);
  }

  /** @param {Error} error @param {number} [code] @param {string} [reason] */
  #close(error, code = 1000, reason = "") {
    if (this.isClosed) return;
    this.isClosed = true;
    this.error ??= error;
    clearInterval(this.#timer);
    clearTimeout(this.#poll);
    this.#queue = [];
    this.#items = [];
    this.#failOpen(this.error);
    for (const wake of this.#roomWaiters.splice(0)) wake();
    try { this.ws?.close(code, reason.slice(0, 100)); } catch { /* already closed */ }
    this.#resolveClosed(this.error);
  }
}

// ------------------------------------------------------------------ reconnecting

/**
 * @typedef {object} ConnectOptions
 * @property {TokenSource} [token] a token, or a function giving one (or a Promise of one), called on every (re)connect
 * @property {string} [name] this client's name, in the leader's statistics and logs
 * @property {AbortSignal} [signal] closes the client when aborted
 * @property {{base?: number, factor?: number, cap?: number, random?: () => number}} [reconnect] backoff, in ms
 * @property {number} [connectTimeout] ms for the first connection (and each attempt; default 10000)
 * @property {number} [maxFrame] the largest frame body accepted from the leader
 * @property {number} [maxPending] calls that may wait for their answer at once (default 10000): past them submit, enqueue and publish wait, job() and queries throw Busy
 * @property {any} [WebSocket] the WebSocket class (default: the global one)
 * @property {typeof fetch} [fetch] used to explain a failure to connect (default: the global one)
 */

/**
 * Keeps one connection going: connects, and reconnects with backoff, one attempt at a
 * time, for a Client or a worker. Internal (used by client.js and worker.js).
 */
export class Connector {
  /** @type {Link|null} */ link = null;
  closing = false;
  connects = 0;
  /** @type {Error|null} */ failure = null;
  /** @type {Set<Channel<StatusEvent>>} */ #watchers = new Set();
  /** @type {(() => void)|null} */ #wakeSleep = null;
  /** @type {Array<[any, string, EventListener]>} */ #listeners = [];
  /** @type {Link|null} a connection being opened */ #opening = null;
  /** @type {Error|null} why close() was called (an abort signal's reason) */ #closeReason = null;
  /** @type {Array<() => void>} woken on connected and on closed */ #waiters = [];

  /**
   * @param {string} url
   * @param {ConnectOptions & {hello: (token: string|null) => Record<string, any>, onMessage: (msg: any, link: Link) => void,
   *   onConnected: (link: Link) => void, onDisconnected: (error: Error|null) => void, onFailure: (error: Error) => void}} options
   */
  constructor(url, options) {
    if (!/^wss?:\/\//i.test(url)) throw new TypeError(`a leader's URL must be ws:// or wss://, got ${url}`);
    this.url = url;
    this.options = options;
    this.backoff = new Backoff(options.reconnect);
    /** @type {Promise<Error|null>} resolves once closed for good, with why (null: closed by the caller) */
    this.closed = new Promise((resolve) => { this.resolveClosed = resolve; });
    const target = /** @type {any} */ (globalThis);
    if (typeof target.addEventListener === "function") {
      const wake = () => this.wake();
      const visible = () => { if (target.document?.visibilityState !== "hidden") this.wake(); };
      for (const [t, type, fn] of [[target, "online", wake], [target, "pageshow", wake], [target.document ?? target, "visibilitychange", visible]]) {
        t?.addEventListener?.(type, fn);
        this.#listeners.push([t, type, fn]);
      }
    }
  }

  /** @param {StatusEvent} event */
  emit(event) {
    for (const watcher of this.#watchers) watcher.push(event);
  }

  /** A new async iterator of status events (buffering 256, dropping the oldest). @returns {AsyncIterableIterator<StatusEvent>} */
  status() {
    const channel = /** @type {Channel<StatusEvent>} */ (new Channel(256, true));
    if (this.failure || (this.closing && !this.link)) {
      channel.push({ type: "closed", error: this.failure });
      channel.end();
      return channel;
    }
    this.#watchers.add(channel);
    const ret = channel.return.bind(channel);
    channel.return = () => { this.#watchers.delete(channel); return ret(); };
    return channel;
  }

  /** Retry at once (the page is back online or visible); ping a live connection. */
  wake() {
    if (this.#wakeSleep) this.#wakeSleep();
    else this.link?.ping();
  }

  /** @param {number} ms */
  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); resolve(undefined); }
      this.#wakeSleep = () => { this.#wakeSleep = null; done(); };
    }).finally(() => { this.#wakeSleep = null; });
  }

  /** @returns {Promise<string|null>} */
  async #token() {
    const token = this.options.token;
    if (token == null) return null;
    if (typeof token === "string") return token;
    const value = await token();
    if (typeof value !== "string") throw new ClientError(`the token provider returned ${typeof value}, not a string`);
    return value;
  }

  /**
   * Run until closed. Resolves once the first connection is made; rejects with why the
   * first connection failed when retrying cannot help (or after connectTimeout).
   * @returns {Promise<void>}
   */
  start() {
    return new Promise((resolve, reject) => {
      this.#loop(resolve, reject);
    });
  }

  /** @param {Function} resolve @param {Function} reject */
  async #loop(resolve, reject) {
    const started = Date.now();
    const connectTimeout = this.options.connectTimeout ?? 10000;
    /** @type {string|null|undefined} */ let refused;
    let attempt = 0;
    while (!this.closing) {
      attempt++;
      this.emit({ type: "connecting", attempt });
      /** @type {string|null} */ let token = null;
      /** @type {Link|null} */ let link = null;
      try {
        token = await this.#token();
        if (this.closing) break;
        link = await Link.open(this.url, {
          WebSocket: this.options.WebSocket, fetch: this.options.fetch, connectTimeout, maxFrame: this.options.maxFrame,
          hello: this.options.hello(token), onMessage: (msg, link) => this.options.onMessage(msg, link),
        }, (l) => { this.#opening = l; });
      } catch (exc) {
        this.#opening = null;
        if (this.closing) break;
        const error = /** @type {Error} */ (exc);
        const fatal = this.#fatal(error, token, refused);
        if (error instanceof HandshakeError && error.code === "auth_failed") refused = token;
        if (fatal) {
          this.#giveUp(fatal);
          if (!this.connects) reject(fatal);
          return;
        }
        if (!this.connects && Date.now() - started > connectTimeout) {
          const timeout = new ConnectionLost(`could not connect to ${this.url} within ${connectTimeout} ms: ${error.message}`, { cause: error });
          this.#giveUp(timeout);
          reject(timeout);
          return;
        }
        if (this.closing) break;
        this.emit({ type: "disconnected", error });
        const delay = error instanceof HandshakeError && error.retryAfter ? Math.max(error.retryAfter, this.backoff.next()) : this.backoff.next();
        this.emit({ type: "reconnecting", delay, attempt });
        await this.#sleep(delay);
        continue;
      }
      this.#opening = null;
      if (this.closing) {
        await link.close("client closed");
        break;
      }
      const upSince = Date.now();
      attempt = 0;
      refused = undefined;
      this.connects++;
      this.link = link;
      this.emit({ type: "connected", url: this.url, version: /** @type {any} */ (link.welcome).version, heartbeat: /** @type {any} */ (link.welcome).heartbeat });
      this.options.onConnected(link);
      resolve();
      for (const wake of this.#waiters.splice(0)) wake();
      const why = await link.closed;
      this.link = null;
      // A link that stayed up for a while resets the backoff; one that drops at once
      // (a leader that accepts, then fails) does not: no reconnect storm.
      if (Date.now() - upSince >= this.backoff.cap) this.backoff.reset();
      if (this.closing) break;
      if (why instanceof HandshakeError && why.code === "auth_failed" && typeof this.options.token !== "function") {
        this.#giveUp(new AuthFailed(`connection to ${this.url} lost for good: the leader refused the credentials (auth_failed): ${why.reason}`, why.reason));
        return;
      }
      this.options.onDisconnected(why);
      this.emit({ type: "disconnected", error: why });
      if (this.closing) break;
      const delay = this.backoff.next();
      this.emit({ type: "reconnecting", delay, attempt: 1 });
      await this.#sleep(delay);
    }
    if (!this.connects) reject(this.#closeReason ?? new ConnectionLost(`could not connect to ${this.url}: closed before connecting`));
    this.#finish(null);
  }

  /** Resolves once connected (at once if connected now) or closed for good. @returns {Promise<void>} */
  connected() {
    if ((this.link && !this.link.isClosed) || this.closing || this.failure) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /**
   * The error to give up with for a failed attempt, or null to retry.
   * @param {Error} error @param {string|null} token @param {string|null|undefined} refused
   */
  #fatal(error, token, refused) {
    if (error instanceof HandshakeError) {
      if (error.code === "auth_failed") {
        const text = `${this.connects ? `connection to ${this.url} lost for good` : `could not connect to ${this.url}`}: the leader refused the credentials (auth_failed): ${error.reason}`;
        if (typeof this.options.token !== "function" || (!this.connects && token === refused)) return new AuthFailed(text, error.reason);
        return null;
      }
      if (error.code === "busy") return this.connects ? null : new Busy(`${this.url} refused the connection: ${error.reason}`, error.retryAfter);
      if (["not_permitted", "unsupported_version"].includes(error.code)) return new ConnectionLost(`could not connect to ${this.url}: ${error.message}`);
      return null;
    }
    if (!this.connects && (error instanceof WrongProtocol || error instanceof ConnectionRefused)) return error;
    return null;
  }

  /** @param {Error} error */
  #giveUp(error) {
    this.failure = error;
    this.options.onFailure(error);
    this.#finish(error);
  }

  /** @param {Error|null} error */
  #finish(error) {
    for (const wake of this.#waiters.splice(0)) wake();
    for (const [t, type, fn] of this.#listeners.splice(0)) t?.removeEventListener?.(type, fn);
    this.emit({ type: "closed", error });
    for (const watcher of this.#watchers) watcher.end();
    this.#watchers.clear();
    this.resolveClosed(error);
  }

  /** Close for good (gracefully: what is queued goes out first). @param {any} [reason] why (before the first connection: connect() rejects with it) */
  async close(reason) {
    if (this.closing) return this.closed;
    this.closing = true;
    if (reason != null) this.#closeReason = reason;
    for (const wake of this.#waiters.splice(0)) wake();
    this.#opening?.abort(new ConnectionLost(`could not connect to ${this.url}: closed before connecting`));
    if (this.#wakeSleep) this.#wakeSleep();
    const link = this.link;
    if (link) await link.close("client closed");
    return this.closed;
  }
}

// ------------------------------------------------------------------ the client

/**
 * @typedef {object} SubmitOptions
 * @property {0|1} [qos] 1 (default): at least once; 0: at most once
 * @property {number} [timeout] ms to wait for the result (also the job's deadline at the leader)
 * @property {string} [jobId] the job's id (default: crypto.randomUUID())
 * @property {AbortSignal} [signal] stop waiting (the job is abandoned: cancelled unless another client waits for it)
 * @property {Record<string, string>} [headers] text to text metadata
 * @property {number} [maxAttempts] deliveries before the job is dead-lettered
 * @property {boolean} [waitForWorker] queue the job for a worker still to come instead of NoRoute
 */

/**
 * @typedef {object} Call
 * @property {string} kind
 * @property {Record<string, any>} fields
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {boolean} done
 * @property {boolean} sent
 * @property {number} [mid]
 * @property {Channel<{fraction: number|null, note: string|null}>} [progress]
 */

/** A submitted job: its `result` (a promise), its `progress` (an async iterator), `cancel()`. */
export class JobHandle {
  /** @param {Client} client @param {Call} call @param {Promise<any>} result */
  constructor(client, call, result) {
    this.#client = client;
    /** @type {string} */ this.id = call.fields.job_id;
    /** @type {Promise<any>} the job's result; rejects with JobFailed, NoRoute, SubmitTimeout... */
    this.result = result;
    /** @type {AsyncIterableIterator<{fraction: number|null, note: string|null}>} the worker's progress reports, until the result */
    this.progress = /** @type {any} */ (call.progress);
  }

  #client;

  /** Cancel the job (for every client waiting for it); `result` then rejects with JobCancelled. @param {string} [reason] */
  cancel(reason = "") {
    return this.#client.cancel(this.id, reason);
  }
}

/** @typedef {{subject: string, payload: any, headers: Record<string, string>, retained: boolean}} Delivered a message received by a subscription */

/**
 * A subscription: an async iterator of `{subject, payload, headers, retained}`, with `drain()` and `unsubscribe()`.
 * @extends {Channel<Delivered>}
 */
export class Subscription extends Channel {
  /** @param {Client} client @param {number} sid @param {string} pattern @param {string|null} queue @param {number} maxPending */
  constructor(client, sid, pattern, queue, maxPending) {
    super(maxPending);
    this.client = client;
    this.sid = sid;
    this.pattern = pattern;
    this.queue = queue;
    this.slow = false;
  }

  /** Stop receiving: what is buffered is still yielded, then the iteration ends. */
  async drain() {
    this.client._unsubscribe(this);
    this.end();
  }

  /** Stop at once: buffered messages are dropped. */
  async unsubscribe() {
    this.client._unsubscribe(this);
    this.items = [];
    this.end();
  }

  /** @returns {Promise<IteratorResult<any>>} */
  return() {
    this.client._unsubscribe(this);
    return super.return();
  }
}

/** A connection to a leader for submitting jobs, publishing and subscribing. */
export class Client {
  /**
   * Connect to the leader at `url` (ws:// or wss://) and keep connected.
   * Rejects at once with ConnectionRefused (nothing there), WrongProtocol (not a leader's
   * WebSocket), AuthFailed (a refused token), Busy; with ConnectionLost after connectTimeout.
   * @param {string} url @param {ConnectOptions} [options] @returns {Promise<Client>}
   */
  static async connect(url, options = {}) {
    const client = new Client(url, options);
    await client.#connector.start();
    return client;
  }

  /** @type {Connector} */ #connector;
  /** @type {Map<number, Call>} calls sent on the current link, by mid */ #calls = new Map();
  /** @type {Set<Call>} calls waiting for a connection */ #unsent = new Set();
  /** @type {Map<string, Call>} */ #progress = new Map();
  /** @type {Map<number, Subscription>} */ #subs = new Map();
  /** @type {Map<number, Subscription>} subscriptions by their Subscribe's mid */ #subMids = new Map();
  /** @type {Array<Record<string, any>>} */ #cancels = [];
  /** @type {Array<() => void>} */ #slotWaiters = [];
  #sids = 0;

  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.name = options.name ?? "js-client";
    /** Results that answered no waiting call (settled or abandoned before): never delivered twice. */
    this.strayResults = 0;
    /** Errors of the leader that answered no waiting call. */
    this.unansweredErrors = 0;
    this.#connector = new Connector(url, {
      ...options,
      hello: (token) => ({ role: "client", name: this.name, token }),
      onMessage: (msg) => this.#dispatch(msg),
      onConnected: (link) => this.#onConnected(link),
      onDisconnected: (why) => this.#onDisconnected(why),
      onFailure: (error) => this.#fail(error),
    });
    /** @type {Promise<Error|null>} resolves when the client is closed: null by close(), else why it gave up */
    this.closed = this.#connector.closed;
    this.maxPending = options.maxPending ?? 10_000;
    const signal = options.signal;
    if (signal?.aborted) this.#close(signal.reason);
    else signal?.addEventListener("abort", () => this.#close(signal.reason), { once: true });
  }

  /** Connections made so far (more than 1 after a reconnect). */
  get connects() {
    return this.#connector.connects;
  }

  /** An async iterator of connection events (connecting, connected, disconnected, reconnecting with its delay, closed, slow_consumer). */
  status() {
    return this.#connector.status();
  }

  /** Close: queued messages go out, then Bye; waiting calls reject with ConnectionLost. */
  close() {
    return this.#close();
  }

  /** @param {any} [reason] */
  async #close(reason) {
    const closing = this.#connector.close(reason);
    const error = new ConnectionLost(`client closed (${this.url})`);
    this.#fail(error);
    await closing;
  }

  // -------------------------------------------------------------- connection events

  /** @param {Link} link */
  #onConnected(link) {
    this.#subMids.clear(); // (mids start again at 1 on each link)
    for (const sub of this.#subs.values()) this.#sendSubscribe(link, sub);
    for (const cancel of this.#cancels.splice(0)) link.send("Cancel", cancel);
    const calls = [...this.#calls.values(), ...this.#unsent];
    this.#calls.clear();
    this.#unsent.clear();
    for (const call of calls) if (!call.done) this.#transmit(link, call);
  }

  /** @param {any} why */
  #onDisconnected(why) {
    for (const [mid, call] of this.#calls) {
      this.#calls.delete(mid);
      if (why?.poisoned) {
        // One of these may have caused it: sending them again could repeat it for ever.
        this.#settle(call, new ConnectionLost(`connection to ${this.url} ended by the leader's ${why.poisoned} error; the call was not sent again`, { cause: why }));
      } else if (call.kind === "Submit" && call.fields.qos === 0) {
        this.#settle(call, new ConnectionLost(`connection to ${this.url} lost (a QoS 0 job is never sent again)`));
      } else if (!call.done) {
        this.#unsent.add(call);
      }
    }
  }

  /** @param {Error} error */
  #fail(error) {
    for (const call of [...this.#calls.values(), ...this.#unsent]) this.#settle(call, error);
    this.#calls.clear();
    this.#unsent.clear();
    for (const sub of this.#subs.values()) sub.end(error instanceof ConnectionLost && /closed/.test(error.message) ? null : error);
    this.#subs.clear();
  }

  /** @param {Call} call @param {Error|null} error @param {any} [value] */
  #settle(call, error, value) {
    if (call.done) return;
    call.done = true;
    queueMicrotask(() => { for (const wake of this.#slotWaiters.splice(0)) wake(); });
    if (call.kind === "Submit" && this.#progress.get(call.fields.job_id) === call) this.#progress.delete(call.fields.job_id);
    call.progress?.end();
    if (error) call.reject(error);
    else call.resolve(value);
  }

  /** @param {Link} link @param {Call} call */
  #transmit(link, call) {
    if (call.sent && call.kind === "Submit") {
      // A leader took it before: one that restarted has no workers yet (they reconnect
      // too), and must not answer no_route for a job that had a route.
      call.fields = { ...call.fields, wait_for_worker: true };
    }
    let mid;
    try {
      mid = link.send(call.kind, call.fields);
    } catch (exc) {
      this.#settle(call, /** @type {Error} */ (exc));
      return;
    }
    call.sent = true;
    call.mid = mid;
    this.#calls.set(mid, call);
  }

  /** @param {Call} call */
  #start(call) {
    if (this.#connector.failure) return this.#settle(call, this.#connector.failure);
    if (this.#connector.closing) return this.#settle(call, new ConnectionLost(`client closed (${this.url})`));
    const link = this.#connector.link;
    if (link && !link.isClosed) this.#transmit(link, call);
    else this.#unsent.add(call);
  }

  /** @param {Call} call */
  #forget(call) {
    call.done = true;
    queueMicrotask(() => { for (const wake of this.#slotWaiters.splice(0)) wake(); });
    if (call.mid !== undefined && this.#calls.get(call.mid) === call) this.#calls.delete(call.mid);
    this.#unsent.delete(call);
    if (this.#progress.get(call.fields.job_id) === call) this.#progress.delete(call.fields.job_id);
    call.progress?.end();
  }

  /** The caller no longer waits for the job of `call`: Cancel(abandon) unless never sent. @param {Call} call @param {string} why */
  #abandon(call, why) {
    this.#forget(call);
    if (!call.sent) return;
    const cancel = { job_id: call.fields.job_id, reason: cut(`abandoned: ${why}`), abandon: true };
    const link = this.#connector.link;
    if (link && !link.isClosed) link.send("Cancel", cancel);
    else {
      if (this.#cancels.length >= MAX_QUEUED_CANCELS) this.#cancels.shift();
      this.#cancels.push(cancel);
    }
  }

  /** Calls waiting (sent or not) for their answer. */
  get pending() {
    return this.#calls.size + this.#unsent.size;
  }

  /** Throws Busy when `maxPending` calls already wait (for job(), which cannot wait). */
  #pendingCheck() {
    if (this.pending >= this.maxPending) throw new Busy(`${this.pending} calls already wait for their answer (maxPending ${this.maxPending})`, null);
  }

  /** Waits while `maxPending` calls wait (submit, enqueue, publish): woken as calls end. */
  async #pendingRoom() {
    while (this.pending >= this.maxPending && !this.#connector.closing && !this.#connector.failure) {
      await new Promise((r) => this.#slotWaiters.push(() => r(undefined)));
    }
  }

  /** Waits while the socket's buffer is over its bound (backpressure for bursts). */
  async #room() {
    const link = this.#connector.link;
    if (link && !link.hasRoom) await link.room();
  }

  /** @param {Record<string, any>} msg */
  #dispatch(msg) {
    switch (msg.kind) {
      case "Result": {
        const call = this.#calls.get(msg.cid);
        if (!call) { this.strayResults++; return; }
        this.#calls.delete(msg.cid);
        if (msg.ok) {
          let value;
          try {
            value = payloadOf(msg);
          } catch (exc) {
            this.#settle(call, new JobFailed(msg.job_id, "InvalidPayload", `the job's result could not be decoded: ${/** @type {Error} */ (exc).message}`, msg.attempts));
            return;
          }
          this.#settle(call, null, value);
        } else {
          const Kind = msg.error_code === "cancelled" ? JobCancelled : call.kind === "Submit" && call.fields.qos === 1 && !msg.final ? DeadLettered : JobFailed;
          this.#settle(call, new Kind(msg.job_id, msg.error_type ?? "Error", msg.error_message ?? "", msg.attempts, msg.traceback));
        }
        return;
      }
      case "Progress": {
        const call = this.#progress.get(msg.job_id);
        call?.progress?.push({ fraction: msg.fraction, note: msg.note });
        return;
      }
      case "Ack": {
        const call = msg.cid == null ? undefined : this.#calls.get(msg.cid);
        if (call && (call.kind === "Publish" || call.fields.enqueue)) {
          this.#calls.delete(msg.cid);
          this.#settle(call, null, call.kind === "Submit" ? call.fields.job_id : undefined);
        }
        return;
      }
      case "Deliver": {
        const subs = [msg.sid, ...msg.also].map((sid) => this.#subs.get(sid)).filter((s) => s !== undefined);
        if (!subs.length) return;
        let payload;
        try {
          payload = payloadOf(msg);
        } catch {
          return; // a publisher's bad bytes: this message is dropped, the rest go on
        }
        for (const sub of /** @type {Subscription[]} */ (subs)) {
          if (!sub.push({ subject: msg.subject, payload, headers: msg.headers, retained: msg.retained })) {
            if (!sub.slow) {
              sub.slow = true;
              this.#connector.emit({ type: "slow_consumer", sid: sub.sid, pattern: sub.pattern, dropped: sub.dropped });
            }
          } else if (sub.items.length < sub.limit / 2) sub.slow = false;
        }
        return;
      }
      case "Error": {
        const err = /** @type {ErrorFields} */ (msg);
        const call = msg.cid == null ? undefined : this.#calls.get(msg.cid);
        if (call) {
          this.#calls.delete(msg.cid);
          this.#settle(call, errorOf(err, call.fields));
          return;
        }
        const sub = msg.cid == null ? undefined : this.#subMids.get(msg.cid);
        if (sub) {
          this.#subs.delete(sub.sid);
          sub.end(errorOf(err, { subject: sub.pattern }));
          return;
        }
        this.unansweredErrors++;
        return;
      }
      default:
        return; // (Cancel, Assign... are not for a client: the leader sends none)
    }
  }

  // -------------------------------------------------------------- jobs

  /**
   * Submit a job; the handle's `result` settles once, across reconnects.
   * @param {string} subject @param {any} [payload] @param {SubmitOptions & {enqueue?: boolean}} [options]
   * @returns {JobHandle}
   */
  job(subject, payload = null, options = {}) {
    const { qos = 1, timeout, jobId, signal, headers, maxAttempts, waitForWorker = false, enqueue = false } = options;
    if (qos !== 0 && qos !== 1) throw new RangeError(`qos must be 0 or 1, got ${qos}`);
    if (timeout !== undefined && !(timeout > 0 && timeout < 2 ** 31)) throw new RangeError(`timeout must be a number of ms > 0, got ${timeout}`);
    const fields = {
      job_id: jobId ?? uuid(), subject, payload: payload == null ? null : encodePayload(payload),
      headers: headers ?? {}, qos, timeout: timeout === undefined ? null : timeout / 1000,
      max_attempts: maxAttempts ?? null, wait_for_worker: waitForWorker, enqueue,
    };
    checkFields("Submit", fields);
    this.#pendingCheck();
    /** @type {Call} */
    const call = /** @type {any} */ ({ kind: "Submit", fields, done: false, sent: false, progress: new Channel(100, true) });
    const result = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    result.catch(() => {}); // (the caller may only look at progress: no unhandled rejection)
    /** @type {any} */ let timer;
    const onAbort = () => {
      if (call.done) return;
      this.#abandon(call, "its submit was aborted");
      call.reject(signal?.reason ?? new DOMException("aborted", "AbortError"));
    };
    if (signal?.aborted) {
      call.done = true;
      call.reject(signal.reason ?? new DOMException("aborted", "AbortError"));
      call.progress?.end();
      return new JobHandle(this, call, result);
    }
    this.#progress.set(fields.job_id, call);
    signal?.addEventListener("abort", onAbort, { once: true });
    if (timeout !== undefined) {
      timer = setTimeout(() => {
        if (call.done) return;
        this.#abandon(call, `its submit timed out after ${timeout} ms`);
        call.reject(new SubmitTimeout(`no result for job ${fields.job_id} within ${timeout} ms`, fields.job_id));
      }, timeout);
    }
    result.finally(() => { clearTimeout(timer); signal?.removeEventListener("abort", onAbort); }).catch(() => {});
    this.#start(call);
    return new JobHandle(this, call, result);
  }

  /**
   * Submit a job and wait for its result.
   * @param {string} subject @param {any} [payload] @param {SubmitOptions} [options]
   * @returns {Promise<any>} rejects with JobFailed (DeadLettered, JobCancelled), NoRoute, Busy, Conflict, TooLarge, SubmitTimeout, ConnectionLost
   */
  async submit(subject, payload = null, options = {}) {
    await this.#room();
    await this.#pendingRoom();
    return this.job(subject, payload, options).result;
  }

  /**
   * Submit a QoS 1 job without waiting for its outcome: resolves with its id once the
   * leader has accepted it (fetch the outcome later with `result(id, {wait: true})`).
   * @param {string} subject @param {any} [payload] @param {Omit<SubmitOptions, "qos"|"signal"|"timeout">} [options]
   * @returns {Promise<string>}
   */
  async enqueue(subject, payload = null, options = {}) {
    const { jobId, headers, maxAttempts, waitForWorker } = options;
    await this.#room();
    await this.#pendingRoom();
    return this.job(subject, payload, { jobId, headers, maxAttempts, waitForWorker, qos: 1, enqueue: true }).result;
  }

  /**
   * Submit a job per payload, at most `limit` in flight, and yield the results in input
   * order. A Busy answer is retried after its retryAfter. Leaving early abandons the rest.
   * @param {string} subject @param {Iterable<any>|AsyncIterable<any>} payloads
   * @param {SubmitOptions & {limit?: number}} [options]
   * @returns {AsyncGenerator<any>}
   */
  async *map(subject, payloads, options = {}) {
    const { limit = 64, signal, ...rest } = options;
    if (!(limit >= 1)) throw new RangeError(`limit must be at least 1, got ${limit}`);
    signal?.throwIfAborted();
    const stop = new AbortController();
    const onAbort = () => stop.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    /** @type {Array<Promise<{ok: boolean, value?: any, error?: any}>>} */
    const inFlight = [];
    const one = async (/** @type {any} */ payload) => {
      for (;;) {
        try {
          return { ok: true, value: await this.job(subject, payload, { ...rest, signal: stop.signal }).result };
        } catch (error) {
          if (error instanceof Busy && !stop.signal.aborted) {
            await new Promise((r) => {
              const timer = setTimeout(done, error.retryAfter ?? 100);
              function done() { clearTimeout(timer); stop.signal.removeEventListener("abort", done); r(undefined); }
              stop.signal.addEventListener("abort", done, { once: true });
            });
            if (stop.signal.aborted) return { ok: false, error: stop.signal.reason };
            continue;
          }
          return { ok: false, error };
        }
      }
    };
    try {
      for await (const payload of /** @type {AsyncIterable<any>} */ (payloads)) {
        if (inFlight.length >= limit) {
          const done = await /** @type {Promise<any>} */ (inFlight.shift());
          if (!done.ok) throw done.error;
          yield done.value;
        }
        await this.#room();
        inFlight.push(one(payload));
      }
      while (inFlight.length) {
        const done = await /** @type {Promise<any>} */ (inFlight.shift());
        if (!done.ok) throw done.error;
        yield done.value;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (inFlight.length) stop.abort(new ClientError("map left early"));
    }
  }

  /**
   * Request/reply: a QoS 0 job with a timeout (default 5000 ms).
   * @param {string} subject @param {any} [payload] @param {{timeout?: number, headers?: Record<string, string>, signal?: AbortSignal}} [options]
   */
  request(subject, payload = null, { timeout = 5000, headers, signal } = {}) {
    return this.submit(subject, payload, { qos: 0, timeout, headers, signal });
  }

  /**
   * Cancel a job, whoever waits for it (its submit then rejects with JobCancelled).
   * @param {string} jobId @param {string} [reason]
   */
  async cancel(jobId, reason = "") {
    const fields = { job_id: jobId, reason: cut(reason) };
    checkFields("Cancel", fields);
    await this.#send("Cancel", fields);
  }

  /**
   * The result of job `jobId` (submitted by any client), from the leader's stored results.
   * @param {string} jobId @param {{wait?: boolean, timeout?: number}} [options]
   * @returns {Promise<any>} rejects with JobFailed, NotFound, SubmitTimeout
   */
  result(jobId, { wait = false, timeout } = {}) {
    return this.#ask({ what: "result", job_id: jobId, wait }, timeout, `no result for job ${jobId} within ${timeout} ms`);
  }

  /** The leader's statistics. @param {{timeout?: number}} [options] @returns {Promise<Record<string, any>>} */
  stats({ timeout } = {}) {
    return this.#ask({ what: "stats" }, timeout, `no statistics within ${timeout} ms`);
  }

  /** @param {Record<string, any>} fields @param {number|undefined} timeout @param {string} tooSlow */
  #ask(fields, timeout, tooSlow) {
    checkFields("Query", fields);
    this.#pendingCheck();
    /** @type {Call} */
    const call = /** @type {any} */ ({ kind: "Query", fields, done: false, sent: false });
    const result = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    if (timeout !== undefined) {
      const timer = setTimeout(() => {
        if (call.done) return;
        this.#forget(call);
        call.reject(new SubmitTimeout(tooSlow, fields.job_id ?? null));
      }, timeout);
      result.finally(() => clearTimeout(timer)).catch(() => {});
    }
    this.#start(call);
    return result;
  }

  /** Send once connected (a message not tied to a call). @param {string} kind @param {Record<string, any>} fields */
  async #send(kind, fields) {
    for (;;) {
      if (this.#connector.failure) throw this.#connector.failure;
      if (this.#connector.closing) throw new ConnectionLost(`client closed (${this.url})`);
      const link = this.#connector.link;
      if (link && !link.isClosed) {
        await this.#room();
        link.send(kind, fields);
        return;
      }
      await this.#connector.connected();
    }
  }

  // -------------------------------------------------------------- publish and subscribe

  /**
   * Publish to every subscriber of `subject`. With qos 1, resolves once the leader took it
   * (sent again after a reconnect until then).
   * @param {string} subject @param {any} [payload]
   * @param {{headers?: Record<string, string>, retain?: boolean, qos?: 0|1}} [options]
   */
  async publish(subject, payload = null, { headers, retain = false, qos = 0 } = {}) {
    const fields = { subject, payload: payload == null ? null : encodePayload(payload), headers: headers ?? {}, retain, qos };
    checkFields("Publish", fields);
    if (qos === 0) return this.#send("Publish", fields);
    await this.#room();
    await this.#pendingRoom();
    /** @type {Call} */
    const call = /** @type {any} */ ({ kind: "Publish", fields, done: false, sent: false });
    const result = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    this.#start(call);
    return result;
  }

  /**
   * Subscribe to `pattern` (wildcards `*` and `>`). With `queue`, subscriptions of the same
   * queue group share the messages. At most `maxPending` messages are buffered: past
   * them new ones are dropped (`sub.dropped`) and a `slow_consumer` status event is emitted.
   * A refusal by the leader is thrown by the iteration.
   * @param {string} pattern @param {{queue?: string, maxPending?: number}} [options]
   * @returns {Subscription}
   */
  subscribe(pattern, { queue, maxPending = 1000 } = {}) {
    checkFields("Subscribe", { sid: 1, pattern, queue: queue ?? null });
    if (this.#connector.failure) throw this.#connector.failure;
    const sub = new Subscription(this, ++this.#sids, pattern, queue ?? null, maxPending);
    this.#subs.set(sub.sid, sub);
    const link = this.#connector.link;
    if (link && !link.isClosed) this.#sendSubscribe(link, sub);
    return sub;
  }

  /** @param {Link} link @param {Subscription} sub */
  #sendSubscribe(link, sub) {
    const mid = link.send("Subscribe", { sid: sub.sid, pattern: sub.pattern, queue: sub.queue });
    this.#subMids.set(mid, sub);
    if (this.#subMids.size > 10000) this.#subMids.delete(/** @type {number} */ (this.#subMids.keys().next().value));
  }

  /** @internal @param {Subscription} sub */
  _unsubscribe(sub) {
    if (this.#subs.get(sub.sid) !== sub) return;
    this.#subs.delete(sub.sid);
    const link = this.#connector.link;
    if (link && !link.isClosed) link.send("Unsubscribe", { sid: sub.sid });
  }
}
