// Typed errors of the client and the worker, mirroring actors/client/_errors.py.
// Durations are in milliseconds (JavaScript idiom): `Busy.retryAfter` too.

/** Base of every error a client or worker call rejects with. */
export class ClientError extends Error {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The job ran and failed (QoS 1: on its last attempt). */
export class JobFailed extends ClientError {
  /**
   * @param {string} jobId
   * @param {string} errorType the remote error's class name (`ValueError`, `TypeError`...)
   * @param {string} message the remote error message
   * @param {number} attempts deliveries made
   * @param {string|null} [traceback] the remote traceback (or stack), when sent
   */
  constructor(jobId, errorType, message, attempts, traceback = null) {
    super(`job ${jobId} failed after ${attempts} attempt(s): ${errorType}: ${message}`);
    /** @type {string} */ this.jobId = jobId;
    /** @type {string} */ this.errorType = errorType;
    /** @type {string} */ this.remoteMessage = message;
    /** @type {number} */ this.attempts = attempts;
    /** @type {string|null} */ this.traceback = traceback;
  }
}

/** A QoS 1 job used up its attempts; it now sits on `$dlq.<subject>`. */
export class DeadLettered extends JobFailed {}

/** The job was cancelled (the leader's `cancelled` mark, never a handler's error name). */
export class JobCancelled extends JobFailed {}

/** The leader is busy: try again after `retryAfter` milliseconds (null: unknown). */
export class Busy extends ClientError {
  /** @param {string} message @param {number|null} retryAfter milliseconds */
  constructor(message, retryAfter) {
    super(message);
    /** @type {number|null} */ this.retryAfter = retryAfter;
  }
}

/** A message over a frame limit (the leader's, or a receiver's). */
export class TooLarge extends ClientError {
  /** @param {string} message @param {{size?: number, limit?: number}} [info] */
  constructor(message, info = {}) {
    super(message);
    /** @type {number|null} */ this.size = info.size ?? null;
    /** @type {number|null} */ this.limit = info.limit ?? null;
  }
}

/** No result within the call's timeout, or the leader's `timeout` answer. */
export class SubmitTimeout extends ClientError {
  /** @param {string} message @param {string|null} [jobId] */
  constructor(message, jobId = null) {
    super(message);
    /** @type {string|null} */ this.jobId = jobId;
  }
}

/** No connected worker serves the subject (`no_route`). */
export class NoRoute extends ClientError {
  /** @param {string} subject @param {string} message */
  constructor(subject, message) {
    super(message);
    /** @type {string} */ this.subject = subject;
  }
}

/** The job id names another job (another subject or payload): `conflict`. */
export class Conflict extends ClientError {
  /** @param {string} jobId @param {string} message */
  constructor(jobId, message) {
    super(message);
    /** @type {string} */ this.jobId = jobId;
  }
}

/** The leader has no result for this job id (`not_found`). */
export class NotFound extends ClientError {
  /** @param {string} jobId @param {string} message */
  constructor(jobId, message) {
    super(message);
    /** @type {string} */ this.jobId = jobId;
  }
}

/** The connection dropped under a call that is not sent again, or the client gave up or closed. */
export class ConnectionLost extends ClientError {}

/** Nothing listens at the URL (the leader is not running, or listens elsewhere). */
export class ConnectionRefused extends ConnectionLost {}

/** The leader refused the credentials (`auth_failed`); `reason` is the leader's words. */
export class AuthFailed extends ConnectionRefused {
  /** @param {string} message @param {string} reason */
  constructor(message, reason) {
    super(message);
    /** @type {string} */ this.reason = reason;
  }
}

/** What answered at the URL is not a leader's WebSocket (an HTTP server, the TCP port...). */
export class WrongProtocol extends ConnectionLost {}

/** The peer broke the protocol (a bad frame or message); `code` is the protocol's error code. */
export class ProtocolError extends ClientError {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    /** @type {string} */ this.code = code;
  }
}

/** The leader answered with an error code (see docs/protocol.md, Error codes). */
export class RemoteError extends ClientError {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    /** @type {string} */ this.code = code;
    /** @type {string} */ this.remoteMessage = message;
  }
}

/** The leader does not let this client do that (`not_permitted`). */
export class NotPermitted extends RemoteError {
  /** @param {string} message @param {{subject?: string|null, jobId?: string|null}} [info] */
  constructor(message, info = {}) {
    super("not_permitted", message);
    this.message = message;
    /** @type {string|null} */ this.subject = info.subject ?? null;
    /** @type {string|null} */ this.jobId = info.jobId ?? null;
  }
}

/** @typedef {{code: string, message: string, job_id?: string|null, retry_after?: number|null}} ErrorFields the fields of an Error message */

/**
 * The error for the leader's Error message `err` answering `request` (a Submit, Query or
 * Publish, as sent: short field names of protocol.js).
 * @param {ErrorFields} err
 * @param {{subject?: string, job_id?: string}} [request]
 * @returns {ClientError}
 */
export function errorOf(err, request = {}) {
  const jobId = err.job_id ?? request.job_id ?? null;
  switch (err.code) {
    case "busy":
      return new Busy(err.message, err.retry_after == null ? null : err.retry_after * 1000);
    case "no_route":
      return new NoRoute(request.subject ?? "", err.message);
    case "timeout":
      return new SubmitTimeout(err.message, jobId);
    case "too_large":
      return new TooLarge(err.message);
    case "conflict":
      return new Conflict(jobId ?? "", err.message);
    case "not_found":
      return new NotFound(jobId ?? "", err.message);
    case "not_permitted":
      return new NotPermitted(err.message, { subject: request.subject ?? null, jobId });
    default:
      return new RemoteError(err.code, err.message);
  }
}
