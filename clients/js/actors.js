// trio-actors for browsers and Node >= 20: one ES module, no dependencies, no build step.
//   import { Client, Worker, runWorker } from "./actors.js";

export { Client, JobHandle, Subscription, HandshakeError } from "./src/client.js";
export { Worker, Job, runWorker } from "./src/worker.js";
export { Backoff } from "./src/backoff.js";
export { encode, decode, Tagged, RawCbor, CborError } from "./src/cbor.js";
export {
  ClientError, ConnectionLost, ConnectionRefused, AuthFailed, WrongProtocol, NotPermitted, NoRoute, Busy,
  TooLarge, Conflict, NotFound, JobFailed, DeadLettered, JobCancelled, SubmitTimeout, RemoteError, ProtocolError,
} from "./src/errors.js";
