// The wire protocol (docs/protocol.md, version 2): frames, message kinds and their short
// keys, bundles (encoded and decoded), and the checks of what comes in. Sans-I/O: bytes in,
// messages out; messages in, bytes out.
//
// A decoded message is a plain object `{kind, mid, ...}` with the field names of the
// protocol's tables (snake_case, as in docs/protocol.md). A payload stays encoded
// (`payload`: the Uint8Array of its CBOR encoding, or `{plain: value}` for one sent plain
// under key `p`); `payloadOf(msg)` decodes it, so that a bad payload fails one job or
// message, not the connection.
//
// Compressed frames (flag 0x01) are refused (`bad_frame`): the Python leader never
// compresses what it sends, and inflating would need an asynchronous step.

import { decode, encode, RawCbor, Tagged } from "./cbor.js";
import { ProtocolError } from "./errors.js";

/** Protocol versions this client speaks, newest first. */
export const VERSIONS = [2, 1];
/** The default frame limit (16 MiB), and the smallest one a peer may announce. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;
export const MIN_MAX_FRAME = 4096;
/** Nesting of a body and of a payload (protocol/_limits.py MAX_DEPTH). */
export const MAX_DEPTH = 64;
export const MAX_BUNDLE_ITEMS = 4096;
/** The first protocol version whose peers may be sent bundles. */
export const BUNDLE_VERSION = 2;
/** The most bytes a bundle adds around its messages: the frame header (5), the array head (at most 5). */
export const BUNDLE_OVERHEAD = 10;
export const MAX_NAME_LENGTH = 256;
export const MAX_REASON_SIZE = 2048;
const HEADER = 5;

// Field types: u uint, u? uint or null, u1 uint >= 1, t text, t? text or null, b bool,
// n? seconds or null, f? 0..1 or null, e payload, h headers, any, U array of uint,
// T array of text, m map.
const D = Symbol("required");
/** @type {Record<string, [number, Array<[string, string, string, any]>]>} */
const KINDS = {
  Hello: [1, [["mid", "i", "u", D], ["role", "role", "t", D], ["name", "name", "t", ""], ["versions", "v", "U", [1]], ["patterns", "pats", "T", []], ["credit", "cr", "u", 0], ["group", "g", "t?", null], ["token", "tok", "t?", null], ["meta", "meta", "m", {}], ["max_frame", "mf", "u?", null], ["policy", "pol", "t", "round_robin"], ["mode", "mode", "t", "round_robin"]]],
  Welcome: [2, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["version", "v", "u1", D], ["node", "node", "t", ""], ["session", "sess", "t", ""], ["heartbeat", "hb", "n?", null], ["max_frame", "mf", "u?", null]]],
  Submit: [3, [["mid", "i", "u", D], ["job_id", "j", "t", D], ["subject", "s", "t", D], ["payload", "e", "e", null], ["headers", "h", "h", {}], ["qos", "q", "u", 1], ["timeout", "to", "n?", null], ["max_attempts", "ma", "u?", null], ["wait_for_worker", "ww", "b", false], ["enqueue", "enq", "b", false], ["delay", "dl", "n?", null]]],
  Assign: [4, [["mid", "i", "u", D], ["job_id", "j", "t", D], ["subject", "s", "t", D], ["payload", "e", "e", null], ["headers", "h", "h", {}], ["attempt", "a", "u1", 1], ["qos", "q", "u", 1], ["ack_timeout", "at", "n?", null], ["deadline", "dl", "n?", null], ["max_attempts", "ma", "u?", null]]],
  Ack: [5, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["job_id", "j", "t?", null]]],
  Nack: [6, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["job_id", "j", "t", D], ["delay", "d", "n?", null], ["reason", "why", "t", ""]]],
  Progress: [7, [["mid", "i", "u", D], ["job_id", "j", "t", D], ["fraction", "f", "f?", null], ["note", "n", "t?", null]]],
  Result: [8, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["job_id", "j", "t", D], ["ok", "ok", "b", true], ["payload", "e", "e", null], ["error_type", "et", "t?", null], ["error_message", "em", "t?", null], ["attempts", "a", "u", 1], ["final", "fin", "b", false], ["traceback", "tb", "t?", null], ["error_code", "ec", "t?", null]]],
  Credit: [9, [["mid", "i", "u", D], ["credit", "cr", "u", D]]],
  Publish: [10, [["mid", "i", "u", D], ["subject", "s", "t", D], ["payload", "e", "e", null], ["headers", "h", "h", {}], ["qos", "q", "u", 0], ["retain", "r", "b", false]]],
  Subscribe: [11, [["mid", "i", "u", D], ["sid", "sid", "u", D], ["pattern", "pat", "t", D], ["queue", "qg", "t?", null]]],
  Unsubscribe: [12, [["mid", "i", "u", D], ["sid", "sid", "u", D]]],
  Deliver: [13, [["mid", "i", "u", D], ["sid", "sid", "u", D], ["subject", "s", "t", D], ["payload", "e", "e", null], ["headers", "h", "h", {}], ["qos", "q", "u", 0], ["retained", "r", "b", false], ["also", "ss", "U", []]]],
  Cancel: [14, [["mid", "i", "u", D], ["job_id", "j", "t", D], ["reason", "why", "t", ""], ["abandon", "ab", "b", false]]],
  Ping: [15, [["mid", "i", "u", D]]],
  Pong: [16, [["mid", "i", "u", D], ["cid", "c", "u?", null]]],
  Error: [17, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["code", "code", "t", D], ["message", "msg", "t", ""], ["job_id", "j", "t?", null], ["retry_after", "ra", "n?", null]]],
  Bye: [18, [["mid", "i", "u", D], ["reason", "why", "t", ""]]],
  CachePut: [20, [["mid", "i", "u", D], ["cache_id", "cache", "t", D], ["target", "tgt", "t", D], ["entries", "e", "any", []], ["sha256", "sha", "m", {}]]],
  CacheAck: [21, [["mid", "i", "u", D], ["cid", "c", "u?", null], ["cache_id", "cache", "t", D], ["worker", "w", "t", ""], ["statuses", "st", "m", {}], ["error", "err", "t?", null]]],
  Chunk: [22, [["mid", "i", "u", D], ["transfer_id", "x", "t", D], ["index", "n", "u", D], ["data", "d", "any", new Uint8Array(0)], ["last", "last", "b", false], ["total_size", "size", "u?", null], ["sha256", "sha", "t?", null]]],
  Query: [23, [["mid", "i", "u", D], ["what", "w", "t", D], ["job_id", "j", "t?", null], ["wait", "wait", "b", false]]],
};
/** @type {Map<number, [string, Array<[string, string, string, any]>]>} */
const BY_TAG = new Map(Object.entries(KINDS).map(([kind, [tag, fields]]) => [tag, [kind, fields]]));

/** Error codes after which the sender closes the connection. */
export const CLOSING_CODES = new Set(["protocol_error", "frame_too_large", "bad_frame", "unknown_kind", "bad_field", "bad_subject", "protocol_violation", "unsupported_version", "auth_failed", "slow_consumer", "heartbeat_timeout"]);

/** The tag of message kind `kind`. @param {string} kind @returns {number} */
export function tagOf(kind) {
  const entry = KINDS[kind];
  if (!entry) throw new TypeError(`unknown message kind ${kind}`);
  return entry[0];
}

/**
 * The CBOR encoding of a payload value (a `RawCbor` stands for its own bytes).
 * @param {any} value @returns {Uint8Array}
 */
export function encodePayload(value) {
  return value instanceof RawCbor ? value.bytes : encode(value);
}

/**
 * The value of a decoded message's payload (null for none).
 * @param {{payload?: any}} msg
 * @returns {any}
 * @throws {ProtocolError} `bad_field`: the bytes are not exactly one acceptable CBOR item
 */
export function payloadOf(msg) {
  const p = msg.payload;
  if (p == null) return null;
  if (p instanceof Uint8Array) {
    try {
      return decode(p, { maxDepth: MAX_DEPTH });
    } catch (exc) {
      throw new ProtocolError("bad_field", `payload cannot be decoded: ${/** @type {Error} */ (exc).message}`);
    }
  }
  return p.plain;
}

// Outgoing checks (docs/protocol.md, Limits and Subjects): by field name, for the fields a
// client or worker builds from its caller's values. A bad one throws TypeError/RangeError
// here, before anything is sent: the leader would close the connection over it.
const IDS = new Set(["job_id", "cache_id", "transfer_id"]);
const NAMES = new Set(["name", "group", "queue", "node", "session"]);
const SUBJECTS = new Set(["subject"]);
const PATTERNS = new Set(["pattern", "target"]);
const SPACE = /[ \t\r\n\f\0]/;
const chars = (/** @type {string} */ s) => (s.length <= 256 ? s.length : [...s].length);
const UTF8 = new TextEncoder();
/** Whether `s` is over `max` bytes of UTF-8 (counted only when it may be: at most 3 bytes a UTF-16 unit). @param {string} s @param {number} max */
const utf8Over = (s, max) => s.length * 3 > max && UTF8.encode(s).length > max;

/**
 * Throws TypeError (wrong type) or RangeError (out of the protocol's limits) for a field
 * `name` of `kind` that the leader would refuse; `pattern`: wildcards allowed.
 * @param {string} what a subject or pattern @param {boolean} pattern @param {string} [label]
 */
export function checkSubject(what, pattern, label = pattern ? "pattern" : "subject") {
  if (typeof what !== "string") throw new TypeError(`${label} must be a string, got ${typeof what}`);
  const tokens = what.split(".");
  const why = !what ? "is empty" : SPACE.test(what) ? "holds whitespace or NUL" : tokens.includes("") ? "has an empty token" :
    tokens.length > 256 ? "has more than 256 tokens" : utf8Over(what, 4096) ? "is over 4096 bytes" :
    !pattern && (tokens.includes("*") || tokens.includes(">")) ? "holds a wildcard (a subject may not)" :
    tokens.slice(0, -1).includes(">") ? "has > before its last token" : null;
  if (why) throw new TypeError(`bad ${label} ${JSON.stringify(what.slice(0, 100))}: it ${why} (see docs/protocol.md, Subjects)`);
}

/** @param {string} kind @param {Record<string, any>} fields */
export function checkFields(kind, fields) {
  const table = KINDS[kind]?.[1];
  if (!table) throw new TypeError(`unknown message kind ${kind}`);
  for (const [name, , type, dflt] of table) {
    const v = fields[name];
    const label = `${kind}.${name}`;
    if (v === undefined || (v === null && dflt === null)) {
      if (dflt === D && name !== "mid") throw new TypeError(`${label} is required`);
      continue;
    }
    const text = (/** @type {number} */ max, min = 0) => {
      if (typeof v !== "string") throw new TypeError(`${label} must be a string, got ${typeof v}`);
      const n = chars(v);
      if (n < min || n > max) throw new RangeError(`${label} must hold ${min} to ${max} characters, got ${n}`);
    };
    if (IDS.has(name) && dflt === D) text(256, 1);
    else if (IDS.has(name) || NAMES.has(name)) text(256);
    else if (name === "token" || name === "code") text(name === "code" ? 64 : 4096, name === "code" ? 1 : 0);
    else if (SUBJECTS.has(name)) checkSubject(v, false, label);
    else if (PATTERNS.has(name)) checkSubject(v, true, label);
    else if (name === "patterns") { if (!Array.isArray(v) || v.length > 4096) throw new RangeError(`${label}: an array of at most 4096 patterns`); v.forEach((p) => checkSubject(p, true, label)); }
    else if (type === "h") {
      if (!v || typeof v !== "object" || Array.isArray(v)) throw new TypeError(`${label} must be an object of text to text`);
      const entries = Object.entries(v);
      if (entries.length > 64) throw new RangeError(`${label}: at most 64 headers, got ${entries.length}`);
      for (const [k, x] of entries) {
        if (typeof x !== "string") throw new TypeError(`${label}.${k} must be a string`);
        if (chars(k) > 256 || chars(x) > 4096) throw new RangeError(`${label}: a header name is at most 256 characters, a value 4096`);
      }
    } else if (type[0] === "u") {
      const min = type === "u1" || name === "max_attempts" ? 1 : 0;
      if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > Number.MAX_SAFE_INTEGER) throw new RangeError(`${label} must be an integer >= ${min}, got ${v}`);
      if (name === "qos" && v > 1) throw new RangeError(`${label} must be 0 or 1, got ${v}`);
    } else if (type === "n?" || type === "f?") {
      if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || (type === "f?" && v > 1) || (name === "delay" && kind === "Submit" && v > 366 * 86400)) throw new RangeError(`${label} out of range: ${v}`);
    } else if (type === "b" && typeof v !== "boolean") throw new TypeError(`${label} must be a boolean, got ${typeof v}`);
    else if ((type === "t" || type === "t?") && typeof v !== "string") throw new TypeError(`${label} must be a string, got ${typeof v}`);
  }
}

/**
 * One frame holding message `kind` with `fields` (Python field names; payloads already
 * encoded: a Uint8Array, or null). Fields at their default are left out.
 * @param {string} kind
 * @param {Record<string, any>} fields
 * @returns {Uint8Array} the whole frame, header included
 */
export function encodeMessage(kind, fields) {
  const [tag, table] = KINDS[kind];
  checkFields(kind, fields);
  /** @type {Record<string, any>} */
  const map = { t: tag };
  for (const [name, key, , dflt] of table) {
    const value = fields[name];
    if (value === undefined) {
      if (dflt === D) throw new TypeError(`${kind}.${name} is required`);
      continue;
    }
    if (value === null && dflt === null) continue;
    if (isDefault(value, dflt)) continue;
    map[key] = value;
  }
  return frameOf(encode(map));
}

/**
 * The bundle item of message `kind` with `fields`, encoded: `[tag, field, ...]`, the fields
 * by position in the order of the kind's table, a field in the middle always written (at
 * its default too), the trailing ones at their defaults left out (docs/protocol.md, Bundles).
 * @param {string} kind @param {Record<string, any>} fields (Python field names; payloads already encoded)
 * @returns {Uint8Array} the item's CBOR, to be put in a bundle with `bundleFrames`
 */
export function encodeItem(kind, fields) {
  const entry = KINDS[kind];
  if (!entry) throw new TypeError(`unknown message kind ${kind}`);
  checkFields(kind, fields);
  const [tag, table] = entry;
  /** @type {any[]} */
  const values = [tag];
  let end = 1; // (the values up to the last one not at its default)
  for (const [name, , , dflt] of table) {
    let value = fields[name];
    if (value === undefined) {
      if (dflt === D) throw new TypeError(`${kind}.${name} is required`);
      value = dflt;
    }
    values.push(value);
    if (!isDefault(value, dflt)) end = values.length;
  }
  values.length = end;
  return encode(values);
}

/**
 * Whole frames carrying the bundle `items` (from `encodeItem`), in order, as few as fit:
 * each body one bundle of at most `maxBody` bytes and MAX_BUNDLE_ITEMS messages.
 * @param {Uint8Array[]} items @param {number} maxBody the receiver's frame limit
 * @returns {Uint8Array[]}
 * @throws {RangeError} an item over `maxBody - BUNDLE_OVERHEAD` bytes (check sizes on the way in)
 */
export function bundleFrames(items, maxBody) {
  /** @type {Uint8Array[]} */
  const frames = [];
  const room = maxBody - BUNDLE_OVERHEAD;
  let start = 0;
  while (start < items.length) {
    const stop = Math.min(items.length, start + MAX_BUNDLE_ITEMS);
    let size = 0;
    let end = start;
    while (end < stop && size + items[end].length <= room) size += items[end++].length;
    if (end === start) throw new RangeError(`a bundled message of ${items[start].length} bytes is over ${room} bytes`);
    const count = end - start; // (at most 4096: a head of 1 to 3 bytes)
    const head = count < 24 ? [0x80 | count] : count < 256 ? [0x98, count] : [0x99, count >> 8, count & 0xff];
    const frame = new Uint8Array(HEADER + head.length + size);
    new DataView(frame.buffer).setUint32(0, head.length + size);
    frame.set(head, HEADER);
    let at = HEADER + head.length;
    for (let i = start; i < end; i++) {
      frame.set(items[i], at);
      at += items[i].length;
    }
    frames.push(frame);
    start = end;
  }
  return frames;
}

/** @param {any} value @param {any} dflt */
function isDefault(value, dflt) {
  if (dflt === D) return false;
  if (value === dflt) return true;
  if (Array.isArray(dflt)) return Array.isArray(value) && value.length === dflt.length && value.every((v, i) => v === dflt[i]);
  if (dflt instanceof Uint8Array) return value instanceof Uint8Array && value.length === 0;
  if (dflt && typeof dflt === "object") return value && typeof value === "object" && !(value instanceof Uint8Array) && Object.keys(value).length === 0;
  return false;
}

/** A frame: the 5-byte header (length, flags 0) and `body`. @param {Uint8Array} body @returns {Uint8Array} */
export function frameOf(body) {
  const frame = new Uint8Array(HEADER + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, HEADER);
  return frame;
}

/**
 * The messages of one WebSocket message holding one whole frame.
 * @param {ArrayBuffer|Uint8Array} data
 * @param {{maxFrame?: number}} [options] the largest body accepted (default 16 MiB)
 * @returns {Array<Record<string, any>>} one message, or a bundle's messages in order
 * @throws {ProtocolError} with the code of docs/protocol.md (bad_frame, frame_too_large,
 *   bad_field, unknown_kind...)
 */
export function decodeFrame(data, { maxFrame = DEFAULT_MAX_FRAME } = {}) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length < HEADER) throw new ProtocolError("bad_frame", `a frame of ${bytes.length} bytes is shorter than its header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint32(0);
  const flags = bytes[4];
  if (flags & ~1) throw new ProtocolError("bad_frame", `unknown frame flags 0x${flags.toString(16)}`);
  if (length > maxFrame) throw new ProtocolError("frame_too_large", `a frame of ${length} bytes is over the limit of ${maxFrame}`);
  if (flags & 1) throw new ProtocolError("bad_frame", "compressed frames are not supported by this client");
  if (length === 0) throw new ProtocolError("bad_frame", "a frame with an empty body");
  if (length !== bytes.length - HEADER) {
    throw new ProtocolError("bad_frame", `a WebSocket message must hold exactly one frame: header says ${length} bytes, message holds ${bytes.length - HEADER}`);
  }
  let body;
  try {
    // A map body counts towards the 64 levels; a bundle's own array does not.
    body = decode(bytes.subarray(HEADER), { maxDepth: bytes[HEADER] >> 5 === 4 ? MAX_DEPTH + 1 : MAX_DEPTH });
  } catch (exc) {
    throw new ProtocolError("bad_frame", `body is not one acceptable CBOR item: ${/** @type {Error} */ (exc).message}`);
  }
  return decodeBody(body);
}

/**
 * The messages of a decoded body (a map: one message; an array: a bundle).
 * @param {any} body @returns {Array<Record<string, any>>}
 */
export function decodeBody(body) {
  if (Array.isArray(body)) {
    if (body.length === 0) throw new ProtocolError("bad_field", "an empty bundle");
    if (body.length > MAX_BUNDLE_ITEMS) throw new ProtocolError("bad_field", `a bundle of ${body.length} messages (at most ${MAX_BUNDLE_ITEMS})`);
    return body.map(decodeBundled);
  }
  return [decodeMap(body)];
}

/** @param {any} item @returns {Record<string, any>} */
function decodeBundled(item) {
  if (!Array.isArray(item) || item.length === 0) throw new ProtocolError("bad_field", "a bundled message must be a non-empty array");
  const [tag, ...values] = item;
  const [kind, table] = kindOf(tag);
  if (values.length > table.length) throw new ProtocolError("bad_field", `${kind} has ${table.length} fields, the bundle gives ${values.length}`);
  /** @type {Record<string, any>} */
  const msg = { kind };
  table.forEach(([name, , type, dflt], i) => {
    const value = i < values.length ? values[i] : undefined;
    msg[name] = check(kind, name, type, dflt, value, false);
  });
  return msg;
}

/** @param {any} tag @returns {[string, Array<[string, string, string, any]>]} */
function kindOf(tag) {
  if (typeof tag !== "number" || !Number.isInteger(tag)) throw new ProtocolError("bad_field", `a message tag must be an unsigned integer, got ${typeof tag}`);
  const entry = BY_TAG.get(tag);
  if (!entry) throw new ProtocolError("unknown_kind", `tag ${tag} names no message kind`);
  return entry;
}

/** @param {any} map @returns {Record<string, any>} */
function decodeMap(map) {
  /** @type {Map<string, any>} */
  const fields = new Map();
  if (map instanceof Map) {
    for (const [k, v] of map) if (typeof k === "string") fields.set(k, v);
  } else if (map && typeof map === "object" && !(map instanceof Uint8Array) && !Array.isArray(map) && !(map instanceof Tagged)) {
    for (const k of Object.keys(map)) fields.set(k, map[k]);
  } else {
    throw new ProtocolError("bad_field", "a body must be a map (one message) or an array (a bundle)");
  }
  const [kind, table] = kindOf(fields.get("t"));
  /** @type {Record<string, any>} */
  const msg = { kind };
  for (const [name, key, type, dflt] of table) {
    if (type === "e" && fields.has("p")) {
      if (fields.has("e")) throw new ProtocolError("bad_field", `${kind} holds both e and p`);
      const plain = fields.get("p");
      msg.payload = plain == null ? null : { plain };
      continue;
    }
    msg[name] = check(kind, name, type, dflt, fields.get(key), true);
  }
  return msg;
}

/**
 * @param {string} kind @param {string} name @param {string} type @param {any} dflt
 * @param {any} value @param {boolean} _inMap
 */
function check(kind, name, type, dflt, value, _inMap) {
  const bad = (/** @type {string} */ why) => new ProtocolError("bad_field", `${kind}.${name}: ${why}`);
  if (value === undefined) {
    if (dflt === D) throw bad("required");
    return dflt;
  }
  if (value === null) {
    if (dflt === null) return null;
    throw bad("null is a wrong type here");
  }
  const isUint = (/** @type {any} */ v) => (typeof v === "number" && Number.isInteger(v) && v >= 0) || (typeof v === "bigint" && v >= 0n);
  switch (type) {
    case "u":
    case "u?":
    case "u1":
      if (!isUint(value)) throw bad(`expected an unsigned integer, got ${typeof value}`);
      if (typeof value === "bigint") throw bad("an integer beyond 2^53 (too large for this client)");
      if (type === "u1" && value < 1) throw bad("must be at least 1");
      return value;
    case "t":
    case "t?":
      if (typeof value !== "string") throw bad(`expected text, got ${typeof value}`);
      return value;
    case "b":
      if (typeof value !== "boolean") throw bad(`expected a bool, got ${typeof value}`);
      return value;
    case "n?":
    case "f?":
      if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (type === "f?" && value > 1)) throw bad(`expected a number${type === "f?" ? " from 0 to 1" : " >= 0"}`);
      return value;
    case "e":
      if (!(value instanceof Uint8Array)) throw bad("an encoded payload must be a byte string");
      return value;
    case "h": {
      const out = /** @type {Record<string, string>} */ (Object.create(null));
      const entries = value instanceof Map ? [...value] : typeof value === "object" && !Array.isArray(value) && !(value instanceof Uint8Array) ? Object.entries(value) : null;
      if (!entries) throw bad("expected a map of text to text");
      for (const [k, v] of entries) {
        if (typeof k !== "string" || typeof v !== "string") throw bad("headers must be text to text");
        out[k] = v;
      }
      return out;
    }
    case "U":
      if (!Array.isArray(value) || !value.every((v) => typeof v === "number" && Number.isInteger(v) && v >= 0)) throw bad("expected an array of unsigned integers");
      return value;
    case "T":
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) throw bad("expected an array of text");
      return value;
    case "m":
      if (typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) throw bad("expected a map");
      return value;
    default:
      return value;
  }
}

/**
 * `text` cut to at most `size` bytes of UTF-8 (ending in "..."), as the protocol's free-text fields are.
 * @param {string} text @param {number} [size] @returns {string}
 */
export function cut(text, size = MAX_REASON_SIZE) {
  const bytes = UTF8.encode(text);
  if (bytes.length <= size) return text;
  return new TextDecoder().decode(bytes.subarray(0, size - 3)).replace(/\uFFFD$/, "") + "...";
}
