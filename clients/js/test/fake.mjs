// A fake WebSocket and leader for the unit tests (not a test file itself).
import { decodeFrame, encodeMessage, encodePayload, payloadOf } from "../src/protocol.js";

export { encodePayload, payloadOf };

/** A WebSocket whose peer is the test: `behave(ws)` runs on each new socket. */
export class FakeWS {
  /** @type {FakeWS[]} */ static instances = [];
  /** @type {(ws: FakeWS) => void} */ static behave = (ws) => ws.acceptAsLeader();
  constructor(url) {
    this.url = url;
    this.sent = [];
    /** The number of messages in each frame sent (a bundle: more than 1). */
    this.frames = [];
    /** The size of each frame sent, header included. */
    this.bytes = [];
    this.bufferedAmount = 0;
    this.readyState = 0;
    this.mid = 0;
    this.onSent = null;
    FakeWS.instances.push(this);
    setTimeout(() => FakeWS.behave(this), 0);
  }
  get live() { return this.readyState < 2; }
  send(frame) {
    this.bytes.push(frame.length);
    const msgs = decodeFrame(frame);
    this.frames.push(msgs.length);
    for (const msg of msgs) {
      this.sent.push(msg);
      this.onSent?.(msg);
    }
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
  open() { this.readyState = 1; this.onopen?.(); }
  fail() { this.readyState = 3; this.onerror?.({}); }
  drop() { this.readyState = 3; this.onclose?.({ code: 1006, reason: "" }); }
  deliver(kind, fields = {}) {
    if (this.readyState !== 1) return;
    const frame = encodeMessage(kind, { mid: ++this.mid, ...fields });
    this.onmessage?.({ data: frame.buffer });
  }
  raw(data) { this.onmessage?.({ data }); }
  /** Open, and answer the Hello with a Welcome (then `then(hello)`). */
  acceptAsLeader({ heartbeat = null, then, version = 2, maxFrame = null } = {}) {
    this.onSent = (msg) => {
      if (msg.kind === "Hello") {
        this.hello = msg;
        this.deliver("Welcome", { cid: msg.mid, version, heartbeat, max_frame: maxFrame });
        then?.(msg);
      }
    };
    this.open();
  }
  kinds() { return this.sent.map((m) => m.kind); }
}

/** A fetch that explains failures as a refused connection. */
export const refusedFetch = async () => { throw Object.assign(new TypeError("fetch failed"), { cause: { code: "ECONNREFUSED" } }); };

/** Resolves once what was sent in this task went out (a link sends it from microtasks: see Link.send). */
export const flushed = () => new Promise((r) => setImmediate(r));

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` is truthy (polling), at most `ms`. */
export async function until(check, ms = 2000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${check}`);
    await sleep(2);
  }
}
