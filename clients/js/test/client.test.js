import { test } from "node:test";
import assert from "node:assert/strict";

import { Backoff } from "../src/backoff.js";
import { BUNDLE_OVERHEAD, MAX_BUNDLE_ITEMS, bundleFrames, decodeFrame, encodeItem, encodeMessage } from "../src/protocol.js";
import { errorOf, Busy, NoRoute, SubmitTimeout, Conflict, NotFound, NotPermitted, RemoteError, ProtocolError } from "../src/errors.js";
import { AuthFailed, Client, ConnectionLost, DeadLettered, JobCancelled, TooLarge, WrongProtocol } from "../actors.js";
import { FakeWS, encodePayload, flushed, refusedFetch, sleep, until } from "./fake.mjs";

const hex = (s) => Uint8Array.from(s.match(/../g).map((b) => parseInt(b, 16)));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const opts = (extra = {}) => ({ WebSocket: FakeWS, fetch: refusedFetch, reconnect: { base: 20, cap: 40 }, ...extra });

test("backoff: full jitter under a capped exponential ceiling", () => {
  const hi = new Backoff({ base: 100, factor: 2, cap: 1000, random: () => 0.999999 });
  const ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
  for (const c of ceilings) {
    const d = hi.next();
    assert.ok(d < c && d > c * 0.99, `${d} under ${c}`);
  }
  const lo = new Backoff({ random: () => 0 });
  for (let i = 0; i < 10; i++) assert.equal(lo.next(), 0);
  const real = new Backoff({ base: 10, cap: 50 });
  for (let i = 0; i < 200; i++) {
    const n = real.attempt;
    const d = real.next();
    assert.ok(d >= 0 && d < real.ceiling(n) && d < 50);
  }
  real.reset();
  assert.equal(real.attempt, 0);
  assert.throws(() => new Backoff({ base: 0 }), RangeError);
});

test("frames: the doc's Submit example encodes byte for byte and decodes back", () => {
  const frame = encodeMessage("Submit", { mid: 7, job_id: "job-1", subject: "math.square", payload: encodePayload({ n: 7 }), headers: {}, qos: 1 });
  assert.equal(toHex(frame), "0000002400a5617403616907616a656a6f622d3161736b6d6174682e737175617265616544a1616e07");
  const [msg] = decodeFrame(frame);
  assert.equal(msg.kind, "Submit");
  assert.equal(msg.job_id, "job-1");
  assert.equal(msg.qos, 1);
  assert.equal(msg.timeout, null);
});

test("bundles: the doc's example decodes to Progress then Result", () => {
  const msgs = decodeFrame(hex("0000002200" + "82850708656a6f622d31f6687371756172696e6786080907656a6f622d31f5421831"));
  assert.deepEqual(msgs.map((m) => m.kind), ["Progress", "Result"]);
  assert.equal(msgs[0].note, "squaring");
  assert.equal(msgs[0].fraction, null);
  assert.equal(msgs[1].cid, 7);
  assert.equal(msgs[1].attempts, 1);
  assert.deepEqual(msgs[1].payload, hex("1831"));
});

test("bundles: the doc's example encodes byte for byte; frames split by size and count", () => {
  const progress = encodeItem("Progress", { mid: 8, job_id: "job-1", note: "squaring" });
  const result = encodeItem("Result", { mid: 9, cid: 7, job_id: "job-1", payload: encodePayload(49) });
  assert.equal(toHex(progress), "850708656a6f622d31f6687371756172696e67"); // fraction null: a middle field, written
  assert.equal(toHex(result), "86080907656a6f622d31f5421831"); // ok true written, the trailing defaults left out
  const [frame] = bundleFrames([progress, result], 16 << 20);
  assert.equal(toHex(frame), "0000002200" + "82850708656a6f622d31f6687371756172696e6786080907656a6f622d31f5421831");
  // Assign, second attempt, no payload: payload and headers written at their defaults
  assert.equal(toHex(encodeItem("Assign", { mid: 1, job_id: "j", subject: "s", attempt: 2 })), "870401616a6173f6a002");
  assert.equal(toHex(encodeItem("Ping", { mid: 1 })), "820f01");
  assert.throws(() => encodeItem("Submit", { mid: 1, job_id: "", subject: "s" }), RangeError);
  // split by size: each body at most maxBody bytes, the items in order across frames
  const items = Array.from({ length: 10 }, (_, i) => encodeItem("Publish", { mid: i + 1, subject: "a.b", payload: encodePayload("x".repeat(1000)) }));
  const frames = bundleFrames(items, 4096);
  assert.ok(frames.length === 3 && frames.every((f) => f.length - 5 <= 4096));
  assert.deepEqual(frames.flatMap((f) => decodeFrame(f)).map((m) => m.mid), items.map((_, i) => i + 1));
  // split by count: at most MAX_BUNDLE_ITEMS messages in one bundle (array heads of 1, 2 and 3 bytes)
  const pings = Array.from({ length: MAX_BUNDLE_ITEMS + 30 }, (_, i) => encodeItem("Ping", { mid: i + 1 }));
  assert.deepEqual(bundleFrames(pings, 16 << 20).map((f) => decodeFrame(f).length), [MAX_BUNDLE_ITEMS, 30]);
  assert.deepEqual(bundleFrames(pings.slice(0, 23), 4096).map((f) => decodeFrame(f).length), [23]);
  assert.deepEqual(bundleFrames(pings.slice(0, 300), 4096).map((f) => decodeFrame(f).length), [300]);
  assert.throws(() => bundleFrames([items[0]], 1000 + BUNDLE_OVERHEAD), RangeError);
});

test("frames: what is refused, with the protocol's codes", () => {
  const code = (bytes) => { try { decodeFrame(bytes); } catch (e) { assert.ok(e instanceof ProtocolError); return e.code; } return "accepted"; };
  const ping = encodeMessage("Ping", { mid: 1 });
  assert.equal(code(ping), "accepted");
  const flagged = ping.slice(); flagged[4] = 2;
  assert.equal(code(flagged), "bad_frame");
  const zipped = ping.slice(); zipped[4] = 1;
  assert.equal(code(zipped), "bad_frame");
  assert.equal(code(hex("ff00000000")), "frame_too_large");
  assert.equal(code(hex("0000")), "bad_frame");
  assert.equal(code(hex("0000000500a1617418")), "bad_frame"); // length says 5, 4 follow
  assert.equal(code(hex("0000000400a1617413")), "unknown_kind"); // {"t": 19}
  assert.equal(code(hex("000000020081" + "80")), "bad_field"); // [[]]
  assert.equal(code(hex("0000000800" + "81a261740f616901")), "bad_field"); // [{"t": 15, "i": 1}]: a map in a bundle
  assert.equal(code(hex("00000005008183" + "0f0102")), "bad_field"); // Ping with an extra field
  assert.equal(code(hex("0000000400a1617401")), "bad_field"); // Hello without mid
  assert.equal(code(hex("000000090082a2617401616901")), "bad_frame"); // truncated
  assert.throws(() => decodeFrame(ping, { maxFrame: 1 }), /frame_too_large/);
});

test("errors: leader codes map to typed errors", () => {
  const busy = errorOf({ code: "busy", message: "full", retry_after: 1.5 });
  assert.ok(busy instanceof Busy && busy.retryAfter === 1500);
  assert.ok(errorOf({ code: "no_route", message: "x" }, { subject: "a.b" }) instanceof NoRoute);
  assert.equal(errorOf({ code: "no_route", message: "x" }, { subject: "a.b" }).subject, "a.b");
  assert.ok(errorOf({ code: "timeout", message: "x", job_id: "j" }) instanceof SubmitTimeout);
  assert.equal(errorOf({ code: "conflict", message: "x" }, { job_id: "j" }).jobId, "j");
  assert.ok(errorOf({ code: "conflict", message: "x" }) instanceof Conflict);
  assert.ok(errorOf({ code: "not_found", message: "x" }) instanceof NotFound);
  const np = errorOf({ code: "not_permitted", message: "web may not" }, { subject: "s" });
  assert.ok(np instanceof NotPermitted && np instanceof RemoteError && np.subject === "s" && np.message === "web may not");
  const other = errorOf({ code: "weird", message: "m" });
  assert.ok(other instanceof RemoteError && other.code === "weird");
  assert.equal(new DeadLettered("j", "E", "m", 3).name, "DeadLettered");
});

test("client: submit, pong, a result delivered once across a reconnect", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const client = await Client.connect("ws://leader", opts({ name: "t" }));
  const ws = FakeWS.instances[0];
  assert.equal(ws.hello.role, "client");
  assert.deepEqual(ws.hello.versions, [2, 1]);
  ws.deliver("Ping");
  await flushed();
  assert.equal(ws.sent.at(-1).kind, "Pong");
  const handle = client.job("math.square", { n: 7 }, { jobId: "j1" });
  await flushed();
  const submit = ws.sent.at(-1);
  assert.equal(submit.kind, "Submit");
  ws.deliver("Progress", { job_id: "j1", fraction: 0.5 });
  const first = await handle.progress.next();
  assert.equal(first.value.fraction, 0.5);
  ws.drop(); // the connection drops before the result
  await until(() => FakeWS.instances.length === 2 && FakeWS.instances[1].sent.some((m) => m.kind === "Submit"));
  const again = FakeWS.instances[1].sent.find((m) => m.kind === "Submit");
  assert.equal(again.job_id, "j1");
  assert.equal(again.wait_for_worker, true);
  FakeWS.instances[1].deliver("Result", { cid: again.mid, job_id: "j1", payload: encodePayload(49) });
  FakeWS.instances[1].deliver("Result", { cid: again.mid, job_id: "j1", payload: encodePayload(50) });
  assert.equal(await handle.result, 49);
  assert.equal(client.strayResults, 1);
  assert.equal(client.connects, 2);
  // failures: dead-lettered, cancelled, a leader's error
  const dl = client.submit("x.y", null, { jobId: "j2" });
  const cx = client.submit("x.y", null, { jobId: "j3" });
  const nr = client.submit("x.z", null, { jobId: "j4" });
  await sleep(0);
  const [s2, s3, s4] = FakeWS.instances[1].sent.slice(-3);
  FakeWS.instances[1].deliver("Result", { cid: s2.mid, job_id: "j2", ok: false, error_type: "ValueError", error_message: "bad", attempts: 3, traceback: "tb" });
  FakeWS.instances[1].deliver("Result", { cid: s3.mid, job_id: "j3", ok: false, error_type: "Cancelled", error_code: "cancelled" });
  FakeWS.instances[1].deliver("Error", { cid: s4.mid, code: "no_route", message: "no worker serves x.z" });
  await assert.rejects(dl, (e) => e instanceof DeadLettered && e.errorType === "ValueError" && e.traceback === "tb" && e.attempts === 3);
  await assert.rejects(cx, JobCancelled);
  await assert.rejects(nr, (e) => e instanceof NoRoute && e.subject === "x.z");
  // timeout and abort abandon the job
  await assert.rejects(client.submit("x.y", null, { timeout: 10, jobId: "j5" }), SubmitTimeout);
  await flushed();
  assert.deepEqual([FakeWS.instances[1].sent.at(-1).kind, FakeWS.instances[1].sent.at(-1).abandon], ["Cancel", true]);
  const ac = new AbortController();
  const aborted = client.submit("x.y", null, { signal: ac.signal });
  await sleep(0);
  ac.abort();
  await assert.rejects(aborted, { name: "AbortError" });
  const pending = client.submit("x.y");
  await client.close();
  await assert.rejects(pending, ConnectionLost);
  assert.equal(await client.closed, null);
});

test("client: one reconnect attempt at a time, at once on online", async () => {
  FakeWS.instances = [];
  let accept = true;
  FakeWS.behave = (ws) => (accept ? ws.acceptAsLeader() : ws.fail());
  const events = new EventTarget();
  globalThis.addEventListener = events.addEventListener.bind(events);
  globalThis.removeEventListener = events.removeEventListener.bind(events);
  try {
    const client = await Client.connect("ws://leader", opts({ reconnect: { base: 60_000, cap: 60_000, random: () => 1 } }));
    const status = client.status();
    accept = false;
    FakeWS.instances[0].drop();
    const seen = [];
    for await (const e of status) { seen.push(e); if (e.type === "reconnecting") break; }
    assert.ok(seen[1].delay >= 59_000, "a long backoff");
    // 'online' many times: each wakes the one sleeping attempt; never two at once
    for (let i = 0; i < 5; i++) {
      for (let k = 0; k < 10; k++) events.dispatchEvent(new Event("online"));
      const before = FakeWS.instances.length;
      await until(() => FakeWS.instances.length === before + 1);
      await sleep(5);
      assert.equal(FakeWS.instances.filter((w) => w.live).length <= 1, true);
      assert.equal(FakeWS.instances.length, before + 1, "one attempt per wake-up");
    }
    accept = true;
    events.dispatchEvent(new Event("online"));
    for await (const e of status) if (e.type === "connected") break;
    await client.close();
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test("client: a silent connection is dead after 3 heartbeats", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader({ heartbeat: 0.02 });
  const keep = setTimeout(() => {}, 5000); // (the liveness timer is unref'd, the fake socket holds nothing)
  const client = await Client.connect("ws://leader", opts());
  const status = client.status();
  for await (const e of status) if (e.type === "disconnected") { assert.match(e.error.message, /3 heartbeats/); break; }
  // Nothing heard for H: it asks (a Ping, at most one per H), then gives up after 3H.
  const kinds = FakeWS.instances[0].kinds();
  assert.ok(kinds.filter((k) => k === "Ping").length >= 1 && kinds.filter((k) => k === "Ping").length <= 3, String(kinds));
  assert.equal(FakeWS.instances[0].sent.at(-1).code, "heartbeat_timeout");
  await client.close();
  clearTimeout(keep);
});

test("client: subscriptions are bounded, report slow consumers, drain", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const client = await Client.connect("ws://leader", opts());
  const ws = FakeWS.instances[0];
  const status = client.status();
  const sub = client.subscribe("a.*", { maxPending: 3 });
  await flushed();
  const { sid } = ws.sent.at(-1);
  for (let i = 0; i < 10; i++) ws.deliver("Deliver", { sid, subject: "a.b", payload: encodePayload(i) });
  for await (const e of status) if (e.type === "slow_consumer") { assert.equal(e.sid, sid); break; }
  assert.equal(sub.dropped, 7);
  ws.deliver("Deliver", { sid: 999, also: [sid], subject: "a.c", payload: encodePayload("x") }); // still full
  await sub.drain();
  await flushed();
  assert.equal(ws.sent.at(-1).kind, "Unsubscribe");
  const got = [];
  for await (const m of sub) got.push(m.payload);
  assert.deepEqual(got, [0, 1, 2]);
  // a refused Subscribe ends its iteration with the error
  const refused = client.subscribe("b.>");
  await flushed();
  ws.deliver("Error", { cid: ws.sent.at(-1).mid, code: "busy", message: "replay", retry_after: 1 });
  await assert.rejects(refused.next(), Busy);
  await client.close();
});

test("client: a URL that is not a leader's WebSocket, and a refused token", async () => {
  FakeWS.behave = (ws) => { ws.open(); ws.raw("HTTP/1.1 200 OK"); };
  await assert.rejects(Client.connect("ws://web", opts()), (e) => e instanceof WrongProtocol && /does not speak the protocol/.test(e.message));
  FakeWS.behave = (ws) => ws.fail();
  const http = async () => ({ status: 404, body: null });
  await assert.rejects(Client.connect("ws://web", opts({ fetch: http })), (e) => e instanceof WrongProtocol && /HTTP 404/.test(e.message));
  const tcp = async () => { throw Object.assign(new TypeError("fetch failed"), { cause: { code: "HPE_INVALID_CONSTANT" } }); };
  await assert.rejects(Client.connect("ws://tcp", opts({ fetch: tcp })), (e) => e instanceof WrongProtocol && /tcp:\/\/ listener/.test(e.message));
  FakeWS.behave = (ws) => { ws.onSent = (m) => ws.deliver("Error", { cid: m.mid, code: "auth_failed", message: "missing or wrong token" }); ws.open(); };
  await assert.rejects(Client.connect("ws://leader", opts({ token: "bad" })), (e) => e instanceof AuthFailed && e.reason === "missing or wrong token");
  let asked = 0;
  await assert.rejects(Client.connect("ws://leader", opts({ token: async () => { asked++; return "bad"; } })), AuthFailed);
  assert.equal(asked, 2, "a provider is asked again once, then the same refused token is final");
  assert.throws(() => new Client("http://x", opts()), TypeError);
});

test("client: bad fields throw at once; a closing error ends the link and its calls, never resent", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const client = await Client.connect("ws://leader", opts());
  assert.throws(() => client.job("math.x", 1, { jobId: "x".repeat(257) }), RangeError);
  assert.throws(() => client.job("math.x", 1, { jobId: "" }), RangeError);
  assert.throws(() => client.job("bad subject", 1), TypeError);
  assert.throws(() => client.job("a.*", 1), TypeError);
  assert.throws(() => client.job("math.x", 1, { maxAttempts: 0 }), RangeError);
  assert.throws(() => client.job("math.x", 1, { headers: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`h${i}`, "v"])) }), RangeError);
  assert.throws(() => client.job("math.x", 1, { headers: { h: "v".repeat(4097) } }), RangeError);
  assert.throws(() => client.subscribe("a..b"), TypeError);
  assert.throws(() => client.subscribe("a.>.b"), TypeError);
  client.subscribe("a.*.>").return();
  await assert.rejects(client.publish("a b", 1), TypeError);
  assert.ok(!FakeWS.instances[0].sent.some((m) => ["Submit", "Publish"].includes(m.kind)));
  // The leader refuses something with a closing code: the link closes at once, the call
  // sent on it settles with ConnectionLost and is not sent again on the next link.
  const p = client.submit("math.x", 1, { jobId: "poison" });
  await until(() => FakeWS.instances[0].sent.some((m) => m.kind === "Submit"));
  FakeWS.instances[0].deliver("Error", { code: "bad_field", message: "Submit.x: wrong" });
  await assert.rejects(p, (e) => e instanceof ConnectionLost && /bad_field/.test(e.message));
  await until(() => FakeWS.instances.length === 2 && FakeWS.instances[1].hello);
  await sleep(10);
  assert.ok(!FakeWS.instances[1].sent.some((m) => m.kind === "Submit"));
  // A Bye closes at once too (and a call on it is sent again: Bye poisons nothing).
  const q = client.submit("math.x", 2, { jobId: "again" });
  FakeWS.instances[1].deliver("Bye", { reason: "restart" });
  await until(() => FakeWS.instances.length === 3 && FakeWS.instances[2].sent.some((m) => m.kind === "Submit"));
  const s = FakeWS.instances[2].sent.find((m) => m.kind === "Submit");
  FakeWS.instances[2].deliver("Result", { cid: s.mid, job_id: "again", payload: encodePayload(4) });
  assert.equal(await q, 4);
  await client.close();
});

test("client: closed before connecting rejects connect() (with the signal's reason); close() exits at once", async () => {
  FakeWS.instances = [];
  FakeWS.behave = () => {}; // never opens
  const controller = new AbortController();
  const connecting = Client.connect("ws://leader", opts({ signal: controller.signal }));
  await sleep(5);
  controller.abort(new Error("user left"));
  await assert.rejects(connecting, /user left/);
  const c2 = Client.connect("ws://leader", opts({ signal: AbortSignal.abort(new Error("already")) }));
  await assert.rejects(c2, /already/);
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const client = await Client.connect("ws://leader", opts());
  const t0 = Date.now();
  await client.close();
  assert.ok(Date.now() - t0 < 500);
});

test("client: one-way traffic stays alive by pinging; subscribe mids are per link; map honours an aborted signal", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => {
    ws.acceptAsLeader({ heartbeat: 0.02 });
    const prev = ws.onSent;
    ws.onSent = (m) => { prev(m); if (m.kind === "Ping") ws.deliver("Pong", { cid: m.mid }); };
  };
  const keep = setTimeout(() => {}, 5000);
  const client = await Client.connect("ws://leader", opts());
  await sleep(150); // 7 heartbeats, the leader only answers
  assert.equal(client.connects, 1);
  assert.ok(FakeWS.instances[0].kinds().includes("Ping"));
  // A Subscribe's mid on a new link may equal an old call's: an Error for it ends only its own.
  const sub = client.subscribe("a.>");
  await flushed();
  FakeWS.instances[0].drop();
  await until(() => FakeWS.instances.length === 2 && FakeWS.instances[1].sent.some((m) => m.kind === "Subscribe"));
  const old = FakeWS.instances[0].sent.find((m) => m.kind === "Subscribe");
  const sub2 = client.subscribe("b.>");
  await flushed();
  const fresh = FakeWS.instances[1].sent.filter((m) => m.kind === "Subscribe").at(-1);
  assert.equal(fresh.pattern, "b.>");
  if (old.mid !== fresh.mid) FakeWS.instances[1].deliver("Error", { cid: old.mid, code: "not_permitted", message: "stale" });
  FakeWS.instances[1].deliver("Error", { cid: fresh.mid, code: "not_permitted", message: "no" });
  await assert.rejects(sub2.next(), /no/);
  assert.ok(!sub.ended);
  await assert.rejects(async () => { for await (const _ of client.map("math.x", [1, 2], { signal: AbortSignal.abort(new Error("stop")) })) { /* none */ } }, /stop/);
  assert.ok(!FakeWS.instances[1].sent.some((m) => m.kind === "Submit"));
  await client.close();
  clearTimeout(keep);
});

test("client: maxPending bounds the calls waiting: job() throws Busy, submit() waits", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader();
  const client = await Client.connect("ws://leader", opts({ maxPending: 2 }));
  const ws = FakeWS.instances[0];
  const a = client.job("math.x", 1, { jobId: "a" });
  client.job("math.x", 2, { jobId: "b" });
  assert.throws(() => client.job("math.x", 3), Busy);
  let sent = false;
  const c = client.submit("math.x", 3, { jobId: "c" }).then((v) => { sent = true; return v; });
  await sleep(10);
  assert.ok(!ws.sent.some((m) => m.job_id === "c"));
  ws.deliver("Result", { cid: ws.sent.find((m) => m.job_id === "a").mid, job_id: "a" });
  await a.result;
  await until(() => ws.sent.some((m) => m.job_id === "c"));
  assert.ok(!sent);
  await client.close();
  await assert.rejects(c, ConnectionLost);
});

test("client: the messages of one turn go out as one bundle, split at the leader's frame limit", async () => {
  FakeWS.instances = [];
  FakeWS.behave = (ws) => ws.acceptAsLeader({ maxFrame: 4096 });
  const client = await Client.connect("ws://leader", opts());
  const ws = FakeWS.instances[0];
  assert.deepEqual(ws.frames, [1]); // the Hello, alone (before the Welcome, in a map)
  // 64 submits in one turn: one frame, a bundle of 64, in order
  const small = Array.from({ length: 64 }, (_, i) => client.submit("math.x", i, { jobId: `s${i}` }));
  await until(() => ws.sent.length === 65);
  assert.deepEqual(ws.frames, [1, 64]);
  assert.deepEqual(ws.sent.slice(1).map((m) => m.job_id), small.map((_, i) => `s${i}`));
  // the results of one frame: the next submits of their callers make one frame again
  const again = small.map(async (p, i) => { await p; return client.submit("math.x", i, { jobId: `t${i}` }); });
  const frame = bundleFrames(ws.sent.slice(1).map((m) => encodeItem("Result", { mid: m.mid + 1000, cid: m.mid, job_id: m.job_id })), 16 << 20)[0];
  ws.raw(frame.buffer);
  await until(() => ws.sent.length === 129);
  assert.deepEqual(ws.frames, [1, 64, 64]);
  // map: a chain of awaits between its submits, sent together all the same
  const mapped = (async () => { for await (const _ of client.map("math.x", Array.from({ length: 16 }, (_, i) => i), { limit: 16 })) { /* none */ } })();
  await until(() => ws.sent.length === 145);
  assert.deepEqual(ws.frames, [1, 64, 64, 16]);
  const mapFrame = bundleFrames(ws.sent.slice(-16).map((m) => encodeItem("Result", { mid: m.mid + 1000, cid: m.mid, job_id: m.job_id })), 16 << 20)[0];
  ws.raw(mapFrame.buffer);
  await mapped;
  // over the leader's 4096 bytes: split in frames that each fit, nothing lost or reordered
  const big = Array.from({ length: 10 }, (_, i) => client.job("math.x", "x".repeat(1000), { jobId: `b${i}` }));
  await until(() => ws.sent.length === 155);
  assert.ok(ws.frames.length > 5 && ws.bytes.every((n) => n - 5 <= 4096), `${ws.bytes}`);
  assert.deepEqual(ws.sent.slice(-10).map((m) => m.job_id), big.map((h) => h.id));
  // one message over the limit is refused at once, nothing sent
  await assert.rejects(client.submit("math.x", "x".repeat(5000)), (e) => e instanceof TooLarge && e.limit === 4096);
  await flushed();
  assert.equal(ws.sent.length, 155);
  // a leader of version 1 is sent no bundle
  FakeWS.behave = (w) => w.acceptAsLeader({ version: 1 });
  const old = await Client.connect("ws://leader", opts());
  const ws1 = FakeWS.instances[1];
  for (let i = 0; i < 5; i++) old.job("math.x", i);
  await until(() => ws1.sent.length === 6);
  assert.deepEqual(ws1.frames, [1, 1, 1, 1, 1, 1]);
  await old.close();
  await client.close();
  await Promise.allSettled([...small, ...again]);
});
