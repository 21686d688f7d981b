// Tests of the CBOR codec (src/cbor.js): the golden vectors shared with the Python side
// (tests/data/cbor_vectors.json, written by tests/data/gen_cbor_vectors.py from cbor2) in
// both directions, hostile inputs, and seeded random values.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { CborError, MAX_BIGNUM_SIZE, MAX_DEPTH, RawCbor, Tagged, decode, encode } from "../src/cbor.js";

const VECTORS = JSON.parse(
  readFileSync(new URL("../../../tests/data/cbor_vectors.json", import.meta.url), "utf8"),
);

/** @param {string} hex */
const unhex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
/** @param {Uint8Array} bytes */
const tohex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** The JavaScript value a vector's description stands for (see the file's "format"). */
function build(desc) {
  const [[kind, arg]] = Object.entries(desc);
  switch (kind) {
    case "null":
      return null;
    case "undefined":
      return undefined;
    case "bool":
    case "text":
      return arg;
    case "int": {
      const n = BigInt(arg);
      return n >= -BigInt(Number.MAX_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
    }
    case "float":
      return arg === "nan" ? NaN : arg === "inf" ? Infinity : arg === "-inf" ? -Infinity : arg;
    case "bytes":
      return unhex(arg);
    case "array":
      return arg.map(build);
    case "map": {
      const entries = arg.map(([k, v]) => [build(k), build(v)]);
      if (!entries.every(([k]) => typeof k === "string")) return new Map(entries);
      const obj = {};
      for (const [k, v] of entries) {
        Object.defineProperty(obj, k, { value: v, writable: true, enumerable: true, configurable: true });
      }
      return obj;
    }
    case "tag":
      return new Tagged(typeof arg[0] === "string" ? BigInt(arg[0]) : arg[0], build(arg[1]));
    case "date":
      return new Date(Math.round(arg * 1000));
    default:
      throw new Error(`unknown description ${kind}`);
  }
}

/** @param {() => unknown} fn @param {string} what */
function refuses(fn, what) {
  assert.throws(fn, (err) => {
    assert.ok(err instanceof CborError, `${what}: threw ${err} instead of a CborError`);
    return true;
  }, what);
}

test("the vectors file has enough of each kind", () => {
  assert.ok(VECTORS.vectors.length >= 60);
  assert.ok(VECTORS.vectors.filter((v) => v.encode.includes("js")).length >= 60);
  assert.ok(VECTORS.vectors.some((v) => v.name.startsWith("message ")));
  assert.ok(VECTORS.invalid.length >= 20);
});

for (const v of VECTORS.vectors) {
  test(`vector ${v.name}`, () => {
    const expected = build(v.value);
    const bytes = unhex(v.hex);
    const decoded = decode(bytes);
    assert.deepStrictEqual(decoded, expected);
    if (v.encode.includes("js")) assert.equal(tohex(encode(expected)), v.hex);
    // whatever is decoded encodes again, to bytes that decode to the same value
    assert.deepStrictEqual(decode(encode(decoded)), expected);
    // a proper prefix is never one whole item
    for (let end = 0; end < bytes.length; end++) refuses(() => decode(bytes.subarray(0, end)), `prefix ${end}`);
  });
}

for (const v of VECTORS.invalid) {
  test(`invalid ${v.name}`, () => {
    assert.throws(() => decode(unhex(v.hex)), (err) => err instanceof CborError && / at byte \d+$/.test(err.message));
  });
}

test("errors name the problem and the offset", () => {
  assert.throws(() => decode(unhex("0000")), { name: "CborError", message: "1 bytes of trailing data after the CBOR item at byte 1" });
  assert.throws(() => decode(unhex("8201")), { message: "a length of 2 goes beyond the input (1 bytes left) at byte 0" });
  assert.throws(() => decode(unhex("811a0102")), { message: "unexpected end of input at byte 1" });
  assert.throws(() => decode(unhex("811c")), { message: "reserved additional information 28 at byte 1" });
  assert.throws(() => decode(unhex("82015bffffffffffffffff")), /a length of 18446744073709551615 goes beyond the input \(0 bytes left\) at byte 2/);
  assert.throws(() => decode(unhex("8162c328")), { message: "invalid UTF-8 in a text string at byte 1" });
  const err = (() => { try { decode(unhex("0000")); } catch (e) { return e; } })();
  assert.equal(err.offset, 1);
});

test("huge lengths are refused before anything is allocated", () => {
  for (const hex of ["5bffffffffffffffff", "7a7fffffff", "9b00000000ffffffff", "bbffffffffffffffff", "9a7fffffff01", "ba7fffffff0101"]) {
    refuses(() => decode(unhex(hex)), hex);
  }
  // an array count is held to one byte per item, a map's to two
  refuses(() => decode(unhex("a2010203")), "map of 2 in 3 bytes");
  assert.deepStrictEqual(decode(unhex("a201020304")), new Map([[1, 2], [3, 4]]));
});

test("deep nesting is refused at maxDepth, not by the stack", () => {
  const deep = new Uint8Array(200_000).fill(0x81);
  refuses(() => decode(deep), "200,000 nested arrays");
  refuses(() => decode(new Uint8Array(200_000).fill(0x9f)), "200,000 nested indefinite arrays");
  refuses(() => decode(unhex("a16161".repeat(100_000))), "100,000 nested maps");
  refuses(() => decode(unhex("d99c40".repeat(100_000))), "100,000 nested tags");
  const nested = (n) => unhex("81".repeat(n) + "01");
  assert.equal(MAX_DEPTH, 64);
  decode(nested(64));
  refuses(() => decode(nested(65)), "65 levels");
  decode(nested(10), { maxDepth: 10 });
  refuses(() => decode(nested(10), { maxDepth: 9 }), "10 levels, maxDepth 9");
  decode(nested(1000), { maxDepth: 1000 });
  refuses(() => decode(deep, { maxDepth: 1e9 }), "200,000 nested arrays, maxDepth 1e9 (the stack)");
  refuses(() => decode(nested(1), { maxDepth: -1 }), "a negative maxDepth");
  // a bundle's body: its own array does not count, so it is decoded with one more level
  decode(unhex("81" + "81".repeat(64) + "01"), { maxDepth: MAX_DEPTH + 1 });
});

test("decoded text-keyed maps are plain objects: __proto__ is data, never a prototype", () => {
  const value = decode(encode(new Map([["__proto__", { polluted: true }], ["constructor", { prototype: { x: 1 } }]])));
  assert.equal(Object.getPrototypeOf(value), Object.prototype);
  assert.deepStrictEqual(Object.keys(value), ["__proto__", "constructor"]);
  assert.deepStrictEqual(Object.getOwnPropertyDescriptor(value, "__proto__")?.value, { polluted: true });
  assert.equal(/** @type {any} */ (value).polluted, undefined);
  assert.equal(/** @type {any} */ ({}).polluted, undefined);
  assert.equal(/** @type {any} */ ({}).x, undefined);
  // and it encodes back to the same bytes
  assert.equal(tohex(encode(value)), tohex(encode(new Map([["__proto__", { polluted: true }], ["constructor", { prototype: { x: 1 } }]]))));
  // a repeated key is refused, even __proto__ or one Object.prototype has
  refuses(() => decode(unhex("a2695f5f70726f746f5f5f01695f5f70726f746f5f5f02")), "__proto__ twice");
  assert.deepStrictEqual(Object.keys(decode(unhex("a168746f537472696e6701"))), ["toString"]);
  // a map with a key that is not text is a Map, in the order received
  const mixed = decode(unhex("a3616101024162416301"));
  assert.ok(mixed instanceof Map);
  assert.deepStrictEqual([...mixed.keys()], ["a", 2, unhex("63")]);
  refuses(() => decode(unhex("a2416101416102")), "bytes key twice");
  refuses(() => decode(unhex("a201010102")), "int key twice");
  refuses(() => decode(unhex("a2fb3ff8000000000000f6fb3ff8000000000000f6")), "float key twice");
  refuses(() => decode(unhex("a1c1000102")), "a Date key");
});

test("numbers: integers as integers, other Numbers as doubles, BigInt beyond 2^53", () => {
  const hex = (v) => tohex(encode(v));
  assert.equal(hex(1.0), "01");
  assert.equal(hex(-0), "fb8000000000000000");
  assert.equal(hex(0), "00");
  assert.equal(hex(2 ** 53), "fb4340000000000000");
  assert.equal(hex(Number.MAX_SAFE_INTEGER), "1b001fffffffffffff");
  assert.equal(hex(-Number.MAX_SAFE_INTEGER), "3b001ffffffffffffe");
  assert.equal(hex(1e300), "fb7e37e43c8800759c");
  assert.equal(hex(5n), "05");
  assert.equal(hex(-5n), "24");
  assert.equal(hex(2n ** 64n - 1n), "1bffffffffffffffff");
  assert.equal(hex(2n ** 64n), "c249010000000000000000");
  assert.equal(hex(-(2n ** 64n)), "3bffffffffffffffff");
  assert.equal(hex(-(2n ** 64n) - 1n), "c349010000000000000000");
  assert.equal(decode(encode(5n)), 5);
  assert.equal(decode(unhex("1b0020000000000000")), 2n ** 53n);
  assert.equal(decode(unhex("3b001ffffffffffffe")), -Number.MAX_SAFE_INTEGER);
  assert.equal(decode(unhex("3b001fffffffffffff")), -(2n ** 53n));
  const biggest = 2n ** BigInt(8 * MAX_BIGNUM_SIZE) - 1n;
  assert.equal(decode(encode(biggest)), biggest);
  assert.equal(decode(encode(-1n - biggest)), -1n - biggest);
  refuses(() => encode(biggest + 1n), "a bignum of 1025 bytes");
});

test("what encodes as what", () => {
  const hex = (v) => tohex(encode(v));
  assert.equal(hex(new Uint8Array([1, 2])), "420102");
  assert.equal(hex(new Uint16Array([0x0102])), "420201");
  assert.equal(hex(new DataView(new Uint8Array([9, 8, 7]).buffer, 1, 2)), "420807");
  assert.equal(hex(new Uint8Array([9, 8, 7]).subarray(1)), "420807");
  assert.equal(hex(new Uint8Array([1, 2]).buffer), "420102");
  assert.equal(hex(Buffer.from("ab")), "426162");
  assert.equal(hex([1, , 3]), "8301f703"); // eslint-disable-line no-sparse-arrays
  assert.equal(hex({ a: undefined }), "a16161f7");
  assert.equal(hex(Object.assign(Object.create(null), { a: 1 })), "a1616101");
  assert.equal(hex({ [Symbol("s")]: 1, a: 2 }), "a1616102");
  assert.equal(hex(new Map([[[1], 2]])), "a1810102");
  assert.equal(hex(new Date(1363896240000)), "c11a514b67b0");
  assert.equal(hex(new Date(1363896240500)), "c1fb41d452d9ec200000");
  assert.equal(hex(new Date(-1500)), "c1fbbff8000000000000");
  assert.equal(hex(new Tagged(40000, "x")), "d99c406178");
  assert.equal(hex(new Tagged(2n ** 64n - 1n, null)), "dbfffffffffffffffff6");
  assert.equal(hex({ t: 1, e: new RawCbor(unhex("a1616e07")) }), "a26174016165a1616e07");
  assert.deepStrictEqual(encode({ p: new RawCbor(encode([1, [2]])) }), encode({ p: [1, [2]] }));
  // long strings and buffers: every head width, and the buffer growing
  assert.equal(hex("x".repeat(65536)).slice(0, 12), "7a0001000078");
  assert.equal(hex("\u00e9".repeat(30000)).slice(0, 10), "79ea60c3a9");
  assert.equal(hex("\u00e9".repeat(100)).slice(0, 10), "78c8c3a9c3");
  assert.equal(hex(new Uint8Array(65536)).slice(0, 12), "5a0001000000");
  for (const s of ["x".repeat(65536), "\u00e9".repeat(30000), "\u00e9\u20ac\u{1f600}".repeat(40000), "a".repeat(255) + "\u00e9"]) {
    assert.equal(decode(encode(s)), s);
  }
  const many = Array.from({ length: 100_000 }, (_, i) => (i % 3 ? i * 1_000_003 : `s${i}`));
  assert.deepStrictEqual(decode(encode(many)), many);
  // bytes decode to copies, never views of the input
  const input = unhex("420102");
  const out = decode(input);
  input[1] = 9;
  assert.deepStrictEqual(out, new Uint8Array([1, 2]));
  assert.deepStrictEqual(decode(unhex("420102").buffer), new Uint8Array([1, 2]));
  refuses(() => decode(/** @type {any} */ ("a0")), "a string as input");
});

test("values with no encoding are refused", () => {
  class Point { constructor() { this.x = 1; } }
  const cyclic = [];
  cyclic.push(cyclic);
  const cyclicObject = {};
  cyclicObject.self = cyclicObject;
  const cases = {
    "a function": () => 1,
    "a symbol": Symbol("s"),
    "a class instance": new Point(),
    "a boxed Number": new Number(1), // eslint-disable-line no-new-wrappers
    "a Set": new Set([1]),
    "a RegExp": /x/,
    "a cyclic array": cyclic,
    "a cyclic object": cyclicObject,
    "a cyclic Map": (() => { const m = new Map(); m.set("m", m); return m; })(),
    "an invalid Date": new Date(NaN),
    "a lone high surrogate": "a\ud800b",
    "a lone low surrogate": "\udc00",
    "a function in a map": { a: [1, { b: () => 1 }] },
    "65 levels": JSON.parse("[".repeat(65) + "1" + "]".repeat(65)),
  };
  for (const [what, value] of Object.entries(cases)) refuses(() => encode(value), what);
  encode(JSON.parse("[".repeat(64) + "1" + "]".repeat(64)));
  refuses(() => encode([[1]], { maxDepth: 1 }), "maxDepth 1");
  refuses(() => encode(cyclic, { maxDepth: 1e9 }), "a cycle, maxDepth 1e9 (the stack)");
  refuses(() => new Tagged(-1, 0), "tag -1");
  refuses(() => new Tagged(1.5, 0), "tag 1.5");
  refuses(() => new Tagged(2n ** 64n, 0), "tag 2^64");
  refuses(() => new RawCbor(/** @type {any} */ ([1])), "RawCbor of an array");
  // after a failure, the next encode is whole
  assert.equal(tohex(encode([1, 2])), "820102");
});

test("a getter that encodes while encoding gets its own buffer", () => {
  const inner = { a: "inner" };
  const outer = {
    get x() {
      return encode(inner);
    },
    y: "after",
  };
  const value = decode(encode(outer));
  assert.deepStrictEqual(decode(value.x), inner);
  assert.equal(value.y, "after");
});

// ---------------------------------------------------------------------------------------
// Seeded random values

/** mulberry32: a small deterministic PRNG. @param {number} seed */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomValues(seed, count) {
  const rnd = prng(seed);
  const int = (n) => Math.floor(rnd() * n);
  const pick = (xs) => xs[int(xs.length)];
  const view = new DataView(new ArrayBuffer(8));
  const text = () => {
    let s = "";
    const n = pick([0, 1, 5, 23, 24, 40, 300]);
    for (let i = 0; i < n; i++) {
      const r = rnd();
      const cp = r < 0.6 ? 0x20 + int(0x5f) : r < 0.8 ? 0x80 + int(0x780) : r < 0.9 ? 0xe000 + int(0x2000) : 0x10000 + int(0x10000);
      s += String.fromCodePoint(cp);
    }
    return s;
  };
  const scalar = () => {
    switch (int(10)) {
      case 0:
        return pick([0, 1, 23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER]) * pick([1, -1]);
      case 1:
        return int(2 ** 31) - 2 ** 30;
      case 2: {
        const big = (BigInt(int(2 ** 32)) << BigInt(int(100))) + BigInt(Number.MAX_SAFE_INTEGER) + 1n;
        return rnd() < 0.5 ? big : -big;
      }
      case 3: {
        view.setUint32(0, int(2 ** 32));
        view.setUint32(4, int(2 ** 32));
        const f = view.getFloat64(0);
        return Number.isSafeInteger(f) && !Object.is(f, -0) ? f + 0.5 : f;
      }
      case 4:
        return pick([NaN, Infinity, -Infinity, -0, 0.1, 1.5, -2.5e-300]);
      case 5:
      case 6:
        return text();
      case 7:
        return Uint8Array.from({ length: pick([0, 1, 24, 100]) }, () => int(256));
      case 8:
        return pick([null, undefined, true, false]);
      default:
        return new Date(int(2 ** 42) - 2 ** 41);
    }
  };
  const value = (depth) => {
    if (depth >= 6 || rnd() < 0.45) return scalar();
    const n = int(6);
    switch (int(4)) {
      case 0:
        return Array.from({ length: n }, () => value(depth + 1));
      case 1: {
        const obj = {};
        for (let i = 0; i < n; i++) {
          const key = pick(["__proto__", "constructor", "0", "17", "a", "b", "ümlaut", text()]);
          Object.defineProperty(obj, key, { value: value(depth + 1), writable: true, enumerable: true, configurable: true });
        }
        return obj;
      }
      case 2: {
        const map = new Map([[int(1000) + 0.5, null]]); // one key that is not text: a Map
        for (let i = 0; i < n; i++) map.set(pick([int(1000), -int(1000), text(), int(2) === 0, null]), value(depth + 1));
        return map;
      }
      default:
        return new Tagged(pick([4, 24, 32, 40000, 2 ** 40, 2n ** 64n - 1n]), value(depth + 1));
    }
  };
  return Array.from({ length: count }, () => value(0));
}

test("random values round-trip (seeded)", () => {
  for (const v of randomValues(0x5eed, 3000)) {
    const bytes = encode(v);
    const back = decode(bytes);
    assert.deepStrictEqual(back, v);
    assert.deepStrictEqual(encode(back), bytes);
  }
});

test("random corruptions decode or raise CborError, nothing else (seeded)", () => {
  const rnd = prng(0xbad);
  const values = randomValues(7, 400);
  for (const v of values) {
    const bytes = encode(v);
    for (let k = 0; k < 10; k++) {
      const copy = bytes.slice(0, 1 + Math.floor(rnd() * bytes.length));
      const flips = 1 + Math.floor(rnd() * 3);
      for (let f = 0; f < flips; f++) copy[Math.floor(rnd() * copy.length)] = Math.floor(rnd() * 256);
      try {
        decode(copy);
      } catch (err) {
        if (!(err instanceof CborError)) throw err;
      }
    }
  }
});
