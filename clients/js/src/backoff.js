// Capped exponential backoff with full jitter (AWS "full jitter"): the n-th delay is a
// uniform draw from [0, min(cap, base * factor ** n)).

/**
 * @typedef {object} BackoffOptions
 * @property {number} [base] first ceiling, in milliseconds (default 100)
 * @property {number} [factor] growth of the ceiling per attempt (default 2)
 * @property {number} [cap] largest ceiling, in milliseconds (default 5000)
 * @property {() => number} [random] a uniform draw in [0, 1) (default Math.random)
 */

/** Reconnect delays: `next()` draws the next one, `reset()` after a success. */
export class Backoff {
  /** @param {BackoffOptions} [options] */
  constructor({ base = 100, factor = 2, cap = 5000, random = Math.random } = {}) {
    if (!(base > 0) || !(factor >= 1) || !(cap >= base)) {
      throw new RangeError(`bad backoff: base ${base} > 0, factor ${factor} >= 1, cap ${cap} >= base`);
    }
    this.base = base;
    this.factor = factor;
    this.cap = cap;
    this.random = random;
    /** Attempts since the last reset. */
    this.attempt = 0;
  }

  /** The ceiling of attempt `n` (from 0), in milliseconds. @param {number} n @returns {number} */
  ceiling(n) {
    return Math.min(this.cap, this.base * this.factor ** Math.min(n, 64));
  }

  /** The next delay, in milliseconds: full jitter under the ceiling. @returns {number} */
  next() {
    return this.random() * this.ceiling(this.attempt++);
  }

  /** Start again from the first ceiling (after a connection succeeded). */
  reset() {
    this.attempt = 0;
  }
}
