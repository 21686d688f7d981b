// For tests/test_js_client.py: the messages of FRAMES (a JSON array of frames in hex, each
// one message in a map), re-encoded as this client's bundle items (`decodeFrame`, then
// `encodeItem`), written as a JSON array of hex for the Python side to decode.
import { decodeFrame, encodeItem } from "../../src/protocol.js";

if (!process.env.FRAMES) process.exit(0); // (run by tests/test_js_client.py)

const hex = (/** @type {string} */ s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const toHex = (/** @type {Uint8Array} */ b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

const out = JSON.parse(process.env.FRAMES).map((/** @type {string} */ frame) => {
  const [{ kind, ...fields }] = decodeFrame(hex(frame));
  return toHex(encodeItem(kind, fields));
});
process.stdout.write(JSON.stringify(out));
