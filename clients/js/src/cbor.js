/**
 * A strict CBOR (RFC 8949) codec for exactly what the trio-actors protocol and its payloads
 * carry, with no dependency: it loads in a page as a plain ES module and in Node >= 20.
 *
 * Decoding (`decode(bytes, {maxDepth})`, from a Uint8Array or an ArrayBuffer):
 * - unsigned and negative integers: a Number when within +-(2^53-1), a BigInt beyond (to
 *   -2^64 and 2^64-1); bignums (tags 2 and 3, at most MAX_BIGNUM_SIZE bytes of magnitude)
 *   the same way, so a bignum that fits is a Number;
 * - floats of half, single and double precision: Numbers (-0, NaN, Infinity kept);
 * - byte strings: Uint8Array (a copy: it never aliases the input); text: string, decoded as
 *   strict UTF-8 (invalid UTF-8 is refused; a leading U+FEFF is kept);
 * - arrays: Array; maps whose keys are all text: a plain object (`{}`) whose own properties
 *   are the keys in the order received, except that JavaScript puts integer-like keys ("7")
 *   first. A key "__proto__" is an own data property (defined, not assigned): it never
 *   changes the object's prototype. A map with any key that is not text (bytes, integer,
 *   float, bool, null) is a Map, in the order received (the Python side itself accepts
 *   only text and byte-string keys in what it decodes); a key that is an array, a map or a
 *   tag is refused; a key repeated in one map is refused (as the Python side does);
 * - false, true, null, undefined; other simple values are refused;
 * - tags 0 (an RFC 3339 date and time, what cbor2 writes for a datetime by default) and 1
 *   (epoch time, a number of seconds) -> Date (to the nearest millisecond; a tag 0 or 1
 *   holding anything else is refused, as cbor2 refuses it); tags 2, 3
 *   -> integers (above); tags 25, 256 (string references), 28, 29 (shared references), 35
 *   (regular expression), 36 (MIME) are refused, as the Python side refuses them; any other
 *   tag -> `new Tagged(tag, value)`;
 * - indefinite-length strings, arrays and maps are accepted, as docs/protocol.md says
 *   receivers do (no sender of ours writes them), with the same checks as definite ones.
 * Refused with a CborError naming the byte offset: reserved additional information
 * (28-30), a length or count beyond the end of the input, a "break" out of place, bytes
 * after the item, nesting deeper than `maxDepth` (default MAX_DEPTH, 64, as the Python
 * side counts it: an item inside more than maxDepth arrays, maps and tags).
 *
 * Encoding (`encode(value, {maxDepth})` -> Uint8Array), as Python's cbor2 writes by default
 * (so the shared golden vectors are the same bytes both ways): the shortest head for every
 * integer and length;
 * - a Number that is a safe integer (Number.isSafeInteger; not -0) -> a CBOR integer; any
 *   other Number -> a 64-bit float, except NaN and +-Infinity, which cbor2 writes as half
 *   floats (f97e00, f97c00, f9fc00). So 1.0 is written as the integer 1, and -0 as the
 *   double -0.0; a whole Number beyond 2^53 (1e300) stays a float;
 * - a BigInt -> a CBOR integer when from -2^64 to 2^64-1, else a bignum (tag 2 or 3, shortest
 *   magnitude; more than MAX_BIGNUM_SIZE bytes is refused, no receiver would accept it);
 * - string -> text (a lone surrogate is refused); Uint8Array, any other ArrayBuffer view
 *   (its bytes) and ArrayBuffer -> bytes; Array -> array (a hole is undefined);
 * - a plain object (prototype Object.prototype or null) -> a map of its own enumerable
 *   string keys (Object.keys order); Map -> a map of its entries, keys of any type;
 * - null, undefined, false, true -> their simple values;
 * - Tagged -> its tag and value; Date -> tag 1 with whole seconds as an integer, else a float
 *   (cbor2 reads tag 1 as a UTC datetime); RawCbor -> its bytes written as they are (an item
 *   already encoded, e.g. a payload kept encoded; not checked);
 * - anything else (functions, symbols, class instances, boxed primitives) is refused, and
 *   so is nesting deeper than maxDepth (which is also how a cycle is refused).
 *
 * @module cbor
 */

/** Deepest nesting accepted by default: the Python side's protocol._limits.MAX_DEPTH. */
export const MAX_DEPTH = 64;
/** Largest bignum magnitude, in bytes: the Python side's MAX_BIGNUM_SIZE. */
export const MAX_BIGNUM_SIZE = 1024;

/** What encode and decode throw: a value with no encoding, or bytes that are not one acceptable item. */
export class CborError extends Error {
  /**
   * @param {string} message what is wrong
   * @param {number} [offset] the byte offset in the input (decoding) or output (encoding)
   */
  constructor(message, offset = -1) {
    super(offset >= 0 ? `${message} at byte ${offset}` : message);
    this.name = "CborError";
    /** @type {number} the byte offset the error is at, -1 when none */
    this.offset = offset;
  }
}

const MAX_TAG = 0xffffffffffffffffn;

/** A CBOR tag with its content: decoded from, and encoded as, any tag this module has no type for. */
export class Tagged {
  /**
   * @param {number|bigint} tag the tag number, an integer from 0 to 2^64-1
   * @param {unknown} value the tag's content
   */
  constructor(tag, value) {
    if (
      !(typeof tag === "number" ? Number.isSafeInteger(tag) && tag >= 0
        : typeof tag === "bigint" && tag >= 0n && tag <= MAX_TAG)
    ) {
      throw new CborError(`a tag number must be an integer from 0 to 2^64-1, got ${String(tag)}`);
    }
    /** @type {number|bigint} */
    this.tag = tag;
    /** @type {unknown} */
    this.value = value;
  }
}

/** CBOR already encoded: `encode` writes these bytes as they are, in the item's place. */
export class RawCbor {
  /** @param {Uint8Array} bytes the encoding of exactly one CBOR item (not checked) */
  constructor(bytes) {
    if (!(bytes instanceof Uint8Array)) throw new CborError("RawCbor takes a Uint8Array");
    /** @type {Uint8Array} */
    this.bytes = bytes;
  }
}

const TWO32 = 0x100000000;
const SAFE = Number.MAX_SAFE_INTEGER;
const utf8In = new TextEncoder();
const utf8Out = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
/** A string with ES2024's isWellFormed (the checked library is ES2022: older browsers lack it). @typedef {string & {isWellFormed(): boolean}} Es2024String */
/** @type {(s: string) => boolean} */
const wellFormed = typeof /** @type {Partial<Es2024String>} */ ("").isWellFormed === "function"
  ? (s) => /** @type {Es2024String} */ (s).isWellFormed()
  : (s) => !LONE_SURROGATE.test(s);

// ---------------------------------------------------------------------------------------
// Encoding

/** @typedef {{buf: Uint8Array, pos: number, max: number}} Writer */

/** Scratch space for the bytes of floats (no DataView is made per call). */
const SCRATCH = new DataView(new ArrayBuffer(8));

/** A buffer kept between calls (taken while in use, so a re-entrant call gets its own). */
let spare = /** @type {Uint8Array|null} */ (null);
const SPARE_LIMIT = 64 * 1024;

/**
 * The CBOR encoding of `value` (see the module's documentation for the mapping).
 * @param {unknown} value
 * @param {{maxDepth?: number}} [options] `maxDepth`: deepest nesting written (default 64)
 * @returns {Uint8Array}
 * @throws {CborError} the value (or something inside it) has no encoding, or nests too deep
 */
export function encode(value, options) {
  const buf = spare ?? new Uint8Array(256);
  spare = null;
  /** @type {Writer} */
  const w = { buf, pos: 0, max: options === undefined ? MAX_DEPTH : depthOption(options) };
  try {
    item(w, value, 0);
  } catch (err) {
    if (err instanceof RangeError) throw new CborError(`cannot encode a value nested too deep for the stack (maxDepth ${w.max})`);
    throw err;
  }
  const out = w.buf.slice(0, w.pos);
  if (w.buf.length <= SPARE_LIMIT) spare = w.buf;
  return out;
}

/** @param {{maxDepth?: number}|undefined} options */
function depthOption(options) {
  const max = options?.maxDepth ?? MAX_DEPTH;
  if (!Number.isSafeInteger(max) || max < 0) {
    throw new CborError(`maxDepth must be a non-negative integer, got ${String(max)}`);
  }
  return max;
}

/** Make room for `n` more bytes. @param {Writer} w @param {number} n */
function room(w, n) {
  if (w.pos + n <= w.buf.length) return;
  let size = w.buf.length * 2;
  while (size < w.pos + n) size *= 2;
  const buf = new Uint8Array(size);
  buf.set(w.buf.subarray(0, w.pos));
  w.buf = buf;
}

/** @param {Writer} w @param {number} b */
function byte(w, b) {
  room(w, 1);
  w.buf[w.pos++] = b;
}

/** A head with a Number argument 0..2^53-1. @param {Writer} w @param {number} major @param {number} n */
function head(w, major, n) {
  room(w, 9);
  const b = w.buf;
  let p = w.pos;
  const m = major << 5;
  if (n < 24) b[p++] = m | n;
  else if (n < 0x100) {
    b[p++] = m | 24;
    b[p++] = n;
  } else if (n < 0x10000) {
    b[p++] = m | 25;
    b[p++] = n >>> 8;
    b[p++] = n & 0xff;
  } else if (n < TWO32) {
    b[p] = m | 26;
    w.pos = p + 1;
    uint32(w, n);
    return;
  } else {
    b[p] = m | 27;
    w.pos = p + 1;
    uint32(w, Math.floor(n / TWO32));
    uint32(w, n >>> 0);
    return;
  }
  w.pos = p;
}

/** Four bytes, big-endian (room already made). @param {Writer} w @param {number} n */
function uint32(w, n) {
  const b = w.buf;
  const p = w.pos;
  b[p] = n >>> 24;
  b[p + 1] = (n >>> 16) & 0xff;
  b[p + 2] = (n >>> 8) & 0xff;
  b[p + 3] = n & 0xff;
  w.pos = p + 4;
}

/** A head with a BigInt argument 0..2^64-1. @param {Writer} w @param {number} major @param {bigint} n */
function bigHead(w, major, n) {
  if (n <= 0x1fffffffffffffn) return head(w, major, Number(n));
  room(w, 9);
  w.buf[w.pos++] = (major << 5) | 27;
  uint32(w, Number(n >> 32n));
  uint32(w, Number(n & 0xffffffffn));
}

/** @param {Writer} w @param {Uint8Array} bytes */
function raw(w, bytes) {
  room(w, bytes.length);
  w.buf.set(bytes, w.pos);
  w.pos += bytes.length;
}

/** @param {Writer} w @param {number} v */
function float(w, v) {
  if (v !== v) return raw(w, NAN);
  if (v === Infinity) return raw(w, INF);
  if (v === -Infinity) return raw(w, NEG_INF);
  room(w, 9);
  SCRATCH.setFloat64(0, v);
  const b = w.buf;
  const p = w.pos;
  b[p] = 0xfb;
  for (let i = 0; i < 8; i++) b[p + 1 + i] = SCRATCH.getUint8(i);
  w.pos = p + 9;
}
const NAN = Uint8Array.of(0xf9, 0x7e, 0x00);
const INF = Uint8Array.of(0xf9, 0x7c, 0x00);
const NEG_INF = Uint8Array.of(0xf9, 0xfc, 0x00);

/** @param {Writer} w @param {string} s */
function text(w, s) {
  const n = s.length;
  if (n < 64) return shortText(w, s, n);
  if (!wellFormed(s)) throw new CborError("cannot encode a string holding a lone surrogate", w.pos);
  // Write after the longest head that the largest size (3 bytes per UTF-16 unit) needs,
  // then move the bytes down if the real size has a shorter head.
  const reserve = n * 3 < 0x10000 ? 3 : 5;
  room(w, 9 + n * 3);
  const at = w.pos;
  const size = /** @type {number} */ (utf8In.encodeInto(s, w.buf.subarray(at + reserve)).written);
  head(w, 3, size);
  if (w.pos !== at + reserve) w.buf.copyWithin(w.pos, at + reserve, at + reserve + size);
  w.pos += size;
}

/**
 * A string of fewer than 64 UTF-16 units (at most 189 bytes of UTF-8), encoded here: a call
 * of TextEncoder costs more than the work for a short key or value.
 * @param {Writer} w @param {string} s @param {number} n
 */
function shortText(w, s, n) {
  room(w, 2 + n * 3);
  const b = w.buf;
  const long = n * 3 >= 24; // a head of 2 bytes, unless the size turns out below 24
  const at = w.pos + (long ? 2 : 1);
  let p = at;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) b[p++] = c;
    else if (c < 0x800) {
      b[p++] = 0xc0 | (c >> 6);
      b[p++] = 0x80 | (c & 63);
    } else if (c < 0xd800 || c > 0xdfff) {
      b[p++] = 0xe0 | (c >> 12);
      b[p++] = 0x80 | ((c >> 6) & 63);
      b[p++] = 0x80 | (c & 63);
    } else {
      const d = s.charCodeAt(i + 1);
      if (c > 0xdbff || !(d >= 0xdc00 && d <= 0xdfff)) {
        throw new CborError("cannot encode a string holding a lone surrogate", w.pos);
      }
      c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
      i++;
      b[p++] = 0xf0 | (c >> 18);
      b[p++] = 0x80 | ((c >> 12) & 63);
      b[p++] = 0x80 | ((c >> 6) & 63);
      b[p++] = 0x80 | (c & 63);
    }
  }
  const size = p - at;
  if (!long) b[w.pos] = 0x60 | size;
  else if (size >= 24) {
    b[w.pos] = 0x78;
    b[w.pos + 1] = size;
  } else {
    b[w.pos] = 0x60 | size;
    b.copyWithin(w.pos + 1, at, p);
    p--;
  }
  w.pos = p;
}

/** @param {Writer} w @param {bigint} v @param {number} depth */
function bigint(w, v, depth) {
  if (v >= 0n) {
    if (v <= MAX_TAG) return bigHead(w, 0, v);
  } else if (v >= -0x10000000000000000n) {
    return bigHead(w, 1, -1n - v);
  }
  const negative = v < 0n;
  let hex = (negative ? -1n - v : v).toString(16);
  if (hex.length & 1) hex = "0" + hex;
  const size = hex.length / 2;
  if (size > MAX_BIGNUM_SIZE) {
    throw new CborError(`cannot encode a bignum of ${size} bytes (the limit is ${MAX_BIGNUM_SIZE})`);
  }
  if (depth >= w.max) tooDeep(w);
  head(w, 6, negative ? 3 : 2);
  head(w, 2, size);
  room(w, size);
  for (let i = 0; i < size; i++) w.buf[w.pos++] = parseInt(hex.substr(i * 2, 2), 16);
}

/** @param {Writer} w @returns {never} */
function tooDeep(w) {
  throw new CborError(`cannot encode a value nested deeper than ${w.max} levels (or holding a cycle)`);
}

/** @param {Writer} w @param {unknown} v @param {number} depth @returns {void} */
function item(w, v, depth) {
  switch (typeof v) {
    case "number":
      if (Number.isSafeInteger(v) && (v !== 0 || 1 / v > 0)) {
        if (v >= 0) head(w, 0, v);
        else head(w, 1, -1 - v);
      } else float(w, v);
      return;
    case "string":
      return text(w, v);
    case "boolean":
      return byte(w, v ? 0xf5 : 0xf4);
    case "undefined":
      return byte(w, 0xf7);
    case "bigint":
      return bigint(w, v, depth);
    case "object":
      if (v === null) return byte(w, 0xf6);
      return object(w, v, depth);
    default:
      throw new CborError(`cannot encode a ${typeof v}`);
  }
}

/** @param {Writer} w @param {object} v @param {number} depth @returns {void} */
function object(w, v, depth) {
  if (Array.isArray(v)) {
    const n = v.length;
    if (n !== 0 && depth >= w.max) tooDeep(w);
    head(w, 4, n);
    for (let i = 0; i < n; i++) item(w, v[i], depth + 1);
    return;
  }
  if (v instanceof Uint8Array) {
    head(w, 2, v.length);
    return raw(w, v);
  }
  const proto = Object.getPrototypeOf(v);
  if (proto === Object.prototype || proto === null) {
    const keys = Object.keys(v);
    const n = keys.length;
    if (n !== 0 && depth >= w.max) tooDeep(w);
    head(w, 5, n);
    const o = /** @type {Record<string, unknown>} */ (v);
    for (let i = 0; i < n; i++) {
      const key = keys[i];
      text(w, key);
      item(w, o[key], depth + 1);
    }
    return;
  }
  if (v instanceof Map) {
    if (v.size !== 0 && depth >= w.max) tooDeep(w);
    head(w, 5, v.size);
    for (const [key, value] of v) {
      item(w, key, depth + 1);
      item(w, value, depth + 1);
    }
    return;
  }
  if (v instanceof RawCbor) return raw(w, v.bytes);
  if (v instanceof Tagged) {
    if (depth >= w.max) tooDeep(w);
    if (typeof v.tag === "bigint") bigHead(w, 6, v.tag);
    else head(w, 6, v.tag);
    return item(w, v.value, depth + 1);
  }
  if (ArrayBuffer.isView(v)) {
    head(w, 2, v.byteLength);
    return raw(w, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  if (v instanceof ArrayBuffer) {
    head(w, 2, v.byteLength);
    return raw(w, new Uint8Array(v));
  }
  if (v instanceof Date) {
    const ms = v.getTime();
    if (ms !== ms) throw new CborError("cannot encode an invalid Date");
    if (depth >= w.max) tooDeep(w);
    head(w, 6, 1);
    return item(w, ms / 1000, depth + 1); // whole seconds: an integer
  }
  const name = /** @type {{constructor?: {name?: string}}} */ (v).constructor?.name || "object";
  throw new CborError(`cannot encode an object of class ${name} (only plain objects, arrays, Map, Uint8Array, Date, Tagged, RawCbor)`);
}

// ---------------------------------------------------------------------------------------
// Decoding

/** @typedef {{b: Uint8Array, p: number, max: number}} Reader */

/** An RFC 3339 date and time (tag 0): date and time, fraction, offset. */
const RFC3339 = /^(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$/;

/** Tags the Python side refuses: string references, shared references, regex, MIME. */
const REFUSED_TAGS = new Set([25, 256, 28, 29, 35, 36]);

/**
 * The one CBOR item `bytes` holds (see the module's documentation for the mapping).
 * @param {Uint8Array|ArrayBuffer} bytes exactly one CBOR item
 * @param {{maxDepth?: number}} [options] `maxDepth`: deepest nesting accepted (default 64;
 *   a bundle's body, whose own array does not count, takes one more)
 * @returns {any}
 * @throws {CborError} the bytes are not exactly one acceptable item
 */
export function decode(bytes, options) {
  let b;
  if (bytes instanceof Uint8Array) b = bytes;
  else if (bytes instanceof ArrayBuffer) b = new Uint8Array(bytes);
  else throw new CborError("decode takes a Uint8Array or an ArrayBuffer");
  /** @type {Reader} */
  const r = { b, p: 0, max: options === undefined ? MAX_DEPTH : depthOption(options) };
  let value;
  try {
    value = read(r, 0);
  } catch (err) {
    if (err instanceof RangeError) throw new CborError(`nesting too deep for the stack (maxDepth ${r.max})`, r.p);
    throw err;
  }
  if (r.p !== b.length) {
    throw new CborError(`${b.length - r.p} bytes of trailing data after the CBOR item`, r.p);
  }
  return value;
}

/** Four bytes, big-endian. @param {Uint8Array} b @param {number} p */
function be32(b, p) {
  return b[p] * 0x1000000 + ((b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]);
}

/** @param {number} at @returns {never} */
function eof(at) {
  throw new CborError("unexpected end of input", at);
}

/**
 * The argument of a head whose first byte was at `at`: a Number, a BigInt when over
 * 2^53-1, or -1 for an indefinite length.
 * @param {Reader} r @param {number} ai @param {number} at @returns {number|bigint}
 */
function arg(r, ai, at) {
  if (ai < 24) return ai;
  const b = r.b;
  const p = r.p;
  switch (ai) {
    case 24:
      if (p + 1 > b.length) eof(at);
      r.p = p + 1;
      return b[p];
    case 25:
      if (p + 2 > b.length) eof(at);
      r.p = p + 2;
      return (b[p] << 8) | b[p + 1];
    case 26:
      if (p + 4 > b.length) eof(at);
      r.p = p + 4;
      return be32(b, p);
    case 27: {
      if (p + 8 > b.length) eof(at);
      r.p = p + 8;
      const hi = be32(b, p);
      if (hi < 0x200000) return hi * TWO32 + be32(b, p + 4);
      return (BigInt(hi) << 32n) | BigInt(be32(b, p + 4));
    }
    case 31:
      return -1;
    default:
      throw new CborError(`reserved additional information ${ai}`, at);
  }
}

/** A length or count, held to what is left of the input. @param {Reader} r @param {number|bigint} n @param {number} unit @param {number} at */
function length(r, n, unit, at) {
  const left = r.b.length - r.p;
  if (typeof n === "bigint" || n * unit > left) {
    throw new CborError(`a length of ${String(n)} goes beyond the input (${left} bytes left)`, at);
  }
  return /** @type {number} */ (n);
}

/** Whether the next byte is a "break" (consumed if so). @param {Reader} r */
function brk(r) {
  if (r.p >= r.b.length) eof(r.p);
  if (r.b[r.p] !== 0xff) return false;
  r.p++;
  return true;
}

/** @param {Reader} r @param {number} depth @returns {any} */
function read(r, depth) {
  const at = r.p;
  if (at >= r.b.length) eof(at);
  const ib = r.b[r.p++];
  const major = ib >> 5;
  const ai = ib & 31;
  if (major === 7) return simple(r, ai, at);
  const n = arg(r, ai, at);
  if (n === -1 && major < 2) throw new CborError("an integer cannot have an indefinite length", at);
  switch (major) {
    case 0:
      return n;
    case 1:
      return typeof n === "number" && n < SAFE ? -1 - n : -1n - BigInt(n);
    case 2:
      return n === -1 ? chunks(r, 2) : r.b.slice(r.p, (r.p += length(r, n, 1, at)));
    case 3:
      return n === -1 ? chunks(r, 3) : utf8(r, length(r, n, 1, at), at);
    case 4:
      return array(r, n, depth, at);
    case 5:
      return map(r, n, depth, at);
    default:
      return tag(r, n, depth, at);
  }
}

/** @param {Reader} r @param {number} n @param {number} at */
function utf8(r, n, at) {
  const b = r.b;
  const start = r.p;
  const end = start + n;
  r.p = end;
  if (n < 64) {
    const s = shortUtf8(b, start, end);
    if (s === null) throw new CborError("invalid UTF-8 in a text string", at);
    return s;
  }
  try {
    return utf8Out.decode(b.subarray(start, end));
  } catch {
    throw new CborError("invalid UTF-8 in a text string", at);
  }
}

const MIN_CODE_POINT = [0, 0x80, 0x800, 0x10000];

/**
 * Strict UTF-8 of fewer than 64 bytes, decoded here (a call of TextDecoder costs more):
 * the string, or null when the bytes are not valid UTF-8 (an overlong form, a surrogate, a
 * code point over U+10FFFF, a truncated or stray continuation byte).
 * @param {Uint8Array} b @param {number} i @param {number} end @returns {string|null}
 */
function shortUtf8(b, i, end) {
  /** @type {number[]} */
  const units = [];
  while (i < end) {
    const c = b[i++];
    if (c < 0x80) {
      units.push(c);
      continue;
    }
    let cp = 0;
    let need = 0;
    if (c >= 0xc2 && c < 0xe0) {
      cp = c & 0x1f;
      need = 1;
    } else if (c >= 0xe0 && c < 0xf0) {
      cp = c & 0x0f;
      need = 2;
    } else if (c >= 0xf0 && c < 0xf5) {
      cp = c & 0x07;
      need = 3;
    } else return null;
    if (i + need > end) return null;
    for (let k = 0; k < need; k++) {
      const cc = b[i++];
      if ((cc & 0xc0) !== 0x80) return null;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < MIN_CODE_POINT[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return null;
    if (cp < 0x10000) units.push(cp);
    else units.push(0xd7c0 + (cp >> 10), 0xdc00 | (cp & 0x3ff));
  }
  return String.fromCharCode.apply(null, units);
}

/**
 * An indefinite-length byte or text string: definite chunks of its own type up to a break
 * (each text chunk valid UTF-8 on its own).
 * @param {Reader} r @param {number} major
 */
function chunks(r, major) {
  /** @type {Uint8Array[]} */
  const parts = [];
  let s = "";
  let size = 0;
  while (!brk(r)) {
    const cat = r.p;
    const ib = r.b[r.p++];
    if (ib >> 5 !== major || (ib & 31) === 31) {
      throw new CborError("a chunk of an indefinite-length string must be a definite string of its type", cat);
    }
    const len = length(r, arg(r, ib & 31, cat), 1, cat);
    if (major === 3) {
      s += utf8(r, len, cat);
      continue;
    }
    parts.push(r.b.subarray(r.p, (r.p += len)));
    size += len;
  }
  if (major === 3) return s;
  const out = new Uint8Array(size);
  let p = 0;
  for (const part of parts) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}

/** @param {Reader} r @param {number|bigint} n @param {number} depth @param {number} at */
function array(r, n, depth, at) {
  if (n === -1) {
    /** @type {unknown[]} */
    const out = [];
    if (brk(r)) return out;
    if (depth >= r.max) tooDeepAt(r, at);
    do out.push(read(r, depth + 1));
    while (!brk(r));
    return out;
  }
  const count = length(r, n, 1, at);
  if (count !== 0 && depth >= r.max) tooDeepAt(r, at);
  const out = new Array(count);
  for (let i = 0; i < count; i++) out[i] = read(r, depth + 1);
  return out;
}

/** @param {Reader} r @param {number} at @returns {never} */
function tooDeepAt(r, at) {
  throw new CborError(`nesting deeper than ${r.max} levels`, at);
}

/** @param {Reader} r @param {number|bigint} n @param {number} depth @param {number} at */
function map(r, n, depth, at) {
  const indefinite = n === -1;
  const count = indefinite ? -1 : length(r, n, 2, at);
  if (count === 0) return {};
  if (indefinite && brk(r)) return {};
  if (depth >= r.max) tooDeepAt(r, at);
  const first = r.p;
  /** @type {Record<string, unknown>} */
  const obj = {};
  for (let i = 0; indefinite ? i === 0 || !brk(r) : i < count; i++) {
    const kat = r.p;
    if (r.b[kat] >> 5 !== 3) {
      r.p = first; // a key that is not text: read the map again, as a Map
      return asMap(r, count, depth);
    }
    const key = /** @type {string} */ (read(r, depth + 1));
    if (Object.hasOwn(obj, key)) throw new CborError(`map key ${JSON.stringify(key.slice(0, 64))} repeated`, kat);
    const value = read(r, depth + 1);
    if (key === "__proto__") {
      Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
    } else obj[key] = value;
  }
  return obj;
}

/** @param {Reader} r @param {number} count -1 when indefinite @param {number} depth */
function asMap(r, count, depth) {
  const out = new Map();
  /** @type {Set<string>|null} */
  let byteKeys = null;
  for (let i = 0; count === -1 ? i === 0 || !brk(r) : i < count; i++) {
    const kat = r.p;
    const key = read(r, depth + 1);
    let seen;
    if (key instanceof Uint8Array) {
      byteKeys ??= new Set();
      const id = hex(key);
      seen = byteKeys.has(id);
      byteKeys.add(id);
    } else if (key !== null && typeof key === "object") {
      throw new CborError("a map key must be text, bytes, a number, a bool or null", kat);
    } else seen = out.has(key);
    if (seen) throw new CborError("map key repeated", kat);
    out.set(key, read(r, depth + 1));
  }
  return out;
}

/** @param {Uint8Array} bytes */
function hex(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += (bytes[i] + 0x100).toString(16).slice(1);
  return s;
}

/** @param {Reader} r @param {number|bigint} n @param {number} depth @param {number} at */
function tag(r, n, depth, at) {
  if (n === -1) throw new CborError("a tag cannot have an indefinite length", at);
  if (depth >= r.max) tooDeepAt(r, at);
  if (n === 2 || n === 3) {
    const cat = r.p;
    const magnitude = read(r, depth + 1);
    if (!(magnitude instanceof Uint8Array)) throw new CborError("a bignum must hold a byte string", cat);
    if (magnitude.length > MAX_BIGNUM_SIZE) {
      throw new CborError(`a bignum of ${magnitude.length} bytes exceeds the limit of ${MAX_BIGNUM_SIZE} bytes`, cat);
    }
    const big = magnitude.length ? BigInt("0x" + hex(magnitude)) : 0n;
    if (big < 0x1fffffffffffffn) return n === 2 ? Number(big) : -1 - Number(big);
    if (n === 2 && big === 0x1fffffffffffffn) return SAFE;
    return n === 2 ? big : -1n - big;
  }
  if (typeof n === "number" && REFUSED_TAGS.has(n)) throw new CborError(`CBOR tag ${n} is not accepted`, at);
  const value = read(r, depth + 1);
  if (n === 0) {
    const m = typeof value === "string" ? RFC3339.exec(value) : null;
    const date = m ? new Date(`${m[1]}T${m[2]}${m[4] === "z" ? "Z" : m[4]}`) : null;
    if (date && m?.[3]) date.setTime(date.getTime() + Math.round(Number(`0.${m[3]}`) * 1000));
    if (!date || Number.isNaN(date.getTime())) {
      throw new CborError("tag 0 (date and time) must hold an RFC 3339 date and time", at);
    }
    return date;
  }
  if (n === 1) {
    if (typeof value !== "number" && typeof value !== "bigint") {
      throw new CborError("tag 1 (epoch time) must hold a number", at);
    }
    const date = new Date(Math.round(Number(value) * 1000));
    if (Number.isNaN(date.getTime())) throw new CborError("tag 1 (epoch time) out of range", at);
    return date;
  }
  return new Tagged(n, value);
}

/** Major type 7. @param {Reader} r @param {number} ai @param {number} at */
function simple(r, ai, at) {
  const p = r.p;
  switch (ai) {
    case 20:
      return false;
    case 21:
      return true;
    case 22:
      return null;
    case 23:
      return undefined;
    case 25: {
      if (p + 2 > r.b.length) eof(at);
      r.p = p + 2;
      return half((r.b[p] << 8) | r.b[p + 1]);
    }
    case 26:
      if (p + 4 > r.b.length) eof(at);
      r.p = p + 4;
      for (let i = 0; i < 4; i++) SCRATCH.setUint8(i, r.b[p + i]);
      return SCRATCH.getFloat32(0);
    case 27:
      if (p + 8 > r.b.length) eof(at);
      r.p = p + 8;
      for (let i = 0; i < 8; i++) SCRATCH.setUint8(i, r.b[p + i]);
      return SCRATCH.getFloat64(0);
    case 31:
      throw new CborError("unexpected break", at);
    default:
      if (ai >= 28) throw new CborError(`reserved additional information ${ai}`, at);
      throw new CborError("unsupported simple value", at);
  }
}

/** An IEEE 754 half-precision float. @param {number} h */
function half(h) {
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  const v = e === 0 ? f * 2 ** -24 : e === 31 ? (f ? NaN : Infinity) : (f + 1024) * 2 ** (e - 25);
  return h & 0x8000 ? -v : v;
}
