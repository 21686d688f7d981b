// The leader's dashboard. The leader pushes a snapshot on $sys.dashboard once a second,
// received here through the project's own client (/actors.js) over the WebSocket of the
// server this page came from (/ws: a feed, which may only watch); what a person asks for
// (a page of workers or dead letters, a job, retry, cancel, scale) goes to the HTTP API
// (/api/...) of the same server. No build step, no dependency.
//
// Rendering: the DOM is updated in place (a row per key, a cell changed only when its text
// did), and every value from the leader goes in as text (textContent, attributes), never
// as markup.
import { AuthFailed, Client } from "/actors.js";

const SUBJECT = "$sys.dashboard";
const TOKEN_KEY = "trio-actors-dashboard-token";
/** Samples drawn at most (one a second: the leader keeps ten minutes). */
const HISTORY = 600;
const WORKER_PAGE = 200;
const DEAD_PAGE = 50;
/** Characters of a value (payload, result, error) shown at most, and of a table cell. */
const TEXT_LIMIT = 2000;
const CELL_LIMIT = 120;
/** Milliseconds between two loads of the dead letters that the snapshots ask for. */
const DEAD_RELOAD = 2000;
const LIVE_STATES = new Set(["queued", "running", "retrying"]);

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

const page = {
  /** @type {Client|null} */ client: null,
  failures: 0,
  readOnly: true,
  scalable: false,
  snapshots: 0,
  lastAt: 0,
  /** @type {Record<string, any[]>} */ history: { at: [], queued: [], in_flight: [], done: [], failed: [], p50: [], p99: [] },
  workersOffset: 0,
  workersState: "",
  workersTotal: 0,
  deadOffset: 0,
  deadTotal: 0,
  /** @type {string|null} */ deadSignature: null,
  deadLoadedAt: 0,
  /** @type {ReturnType<typeof setTimeout>|null} */ deadTimer: null,
  deadForbidden: false,
  /** @type {string|null} */ jobId: null,
};

// ------------------------------------------------------------------ text helpers

/** Set an element's text, touching the DOM only when it changed. @param {Element} el @param {string} value */
function text(el, value) {
  const cell = /** @type {any} */ (el);
  if (cell._text !== value) {
    cell._text = value;
    el.textContent = value;
  }
}

/** @param {string} value @param {number} [limit] */
function cut(value, limit = CELL_LIMIT) {
  return value.length > limit ? `${value.slice(0, limit - 1)}…` : value;
}

/** A cell's text, cut, with the longer text (bounded) as its title. @param {Element} el @param {any} value */
function textCut(el, value) {
  const full = value == null ? "" : String(value);
  text(el, cut(full));
  if (full.length > CELL_LIMIT) el.setAttribute("title", cut(full, TEXT_LIMIT));
  else el.removeAttribute("title");
}

/** @param {any} n */
function count(n) {
  if (n == null || typeof n !== "number" || !Number.isFinite(n)) return "–";
  return Number.isInteger(n) ? n.toLocaleString("en-US") : n.toFixed(1);
}

/** Seconds as ms or s. @param {any} s */
function seconds(s) {
  if (s == null || typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return s < 100 ? `${s.toFixed(2)} s` : `${Math.round(s)} s`;
}

/** A Unix time as the local time of day. @param {any} unix */
function clock(unix) {
  if (typeof unix !== "number" || !Number.isFinite(unix) || unix <= 0) return "–";
  return new Date(unix * 1000).toLocaleTimeString();
}

/** How long ago a Unix time was. @param {any} unix */
function ago(unix) {
  if (typeof unix !== "number" || !Number.isFinite(unix) || unix <= 0) return "–";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

/** Any JSON-like value as bounded text. @param {any} value */
function shown(value) {
  let out;
  try {
    out = typeof value === "string" ? value : JSON.stringify(value);
  } catch {
    out = String(value);
  }
  return cut(out ?? String(value), TEXT_LIMIT);
}

/** @param {string} message @param {string} [kind] */
function notice(message, kind = "") {
  const el = $("notice");
  el.textContent = message;
  el.className = kind || "hint";
}

/** @param {string} message @param {string} kind */
function status(message, kind) {
  const el = $("status");
  text(el, message);
  el.className = kind;
}

// ------------------------------------------------------------------ tables

/**
 * The rows of a table body, one per key, kept in the order given; a row's cells are
 * made once (with `setup`, for buttons and inputs) and their text changed in place.
 */
class Rows {
  /**
   * @param {HTMLTableSectionElement} body
   * @param {string[]} classes a class per cell ("num", "name", ...)
   * @param {(row: HTMLTableRowElement, key: string) => void} [setup]
   */
  constructor(body, classes, setup) {
    this.body = body;
    this.classes = classes;
    this.setup = setup;
    /** @type {Map<string, HTMLTableRowElement>} */ this.rows = new Map();
  }

  /**
   * @template T
   * @param {Iterable<T>} items @param {(item: T) => string} keyOf
   * @param {(row: HTMLTableRowElement, item: T) => void} fill
   */
  update(items, keyOf, fill) {
    const seen = new Set();
    /** @type {ChildNode|null} */ let next = this.body.firstChild;
    for (const item of items) {
      const key = keyOf(item);
      if (seen.has(key)) continue;
      seen.add(key);
      let row = this.rows.get(key);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = key;
        for (const cls of this.classes) {
          const cell = row.insertCell();
          if (cls) cell.className = cls;
        }
        this.setup?.(row, key);
        this.rows.set(key, row);
      }
      fill(row, item);
      if (row !== next) this.body.insertBefore(row, next);
      else next = next.nextSibling;
    }
    for (const [key, row] of this.rows) {
      if (!seen.has(key)) {
        row.remove();
        this.rows.delete(key);
      }
    }
  }
}

/** @param {HTMLTableRowElement} row @param {number} i */
const cell = (row, i) => row.cells[i];

// ------------------------------------------------------------------ the leader

/** The dashboard's feed: /ws on the server (and by the name) this page came from. */
function leaderUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

const needsToken = () => document.querySelector('meta[name="actors-auth"]')?.getAttribute("content") === "token";
const token = () => sessionStorage.getItem(TOKEN_KEY);

/**
 * A request to the API, with the token if there is one; the answer's JSON.
 * @param {string} method @param {string} path @param {any} [body]
 */
async function api(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  const secret = token();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = /** @type {Error & {status?: number, code?: string}} */ (
      new Error(typeof data?.message === "string" ? data.message : `HTTP ${response.status}`)
    );
    error.status = response.status;
    error.code = typeof data?.error === "string" ? data.error : undefined;
    if (response.status === 401 && needsToken()) askToken(`the API refused the token: ${error.message}`);
    throw error;
  }
  return data;
}

/** @param {string} [why] */
function askToken(why = "") {
  $("login").hidden = false;
  text($("login-error"), why);
  status(why ? "token refused" : "a token is needed", "failed");
  /** @type {HTMLInputElement} */ ($("token")).focus();
}

async function connect() {
  if (needsToken() && !token()) {
    askToken();
    return;
  }
  $("login").hidden = true;
  $("forget-token").hidden = !token();
  const url = leaderUrl();
  status(`connecting to ${url}`, "connecting");
  try {
    page.client = await Client.connect(url, { name: "dashboard", token: token() ?? undefined });
  } catch (error) {
    const e = /** @type {Error} */ (error);
    if (e instanceof AuthFailed) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken(`the leader refused the token: ${e.message}`);
    } else {
      // (a leader restarting, say: the client reconnects by itself once connected)
      const delay = Math.min(30, 2 ** page.failures++);
      status(`${e.name}: ${e.message} (again in ${delay} s)`, "failed");
      setTimeout(connect, delay * 1000);
    }
    return;
  }
  page.failures = 0;
  status(`connected to ${url}`, "connected");
  followStatus(page.client);
  receive(page.client);
  loadDeadLetters();
}

/** @param {Client} client */
async function followStatus(client) {
  for await (const event of client.status()) {
    if (event.type === "connected") status(`connected to ${event.url}`, "connected");
    else if (event.type === "reconnecting") status(`reconnecting in ${(event.delay / 1000).toFixed(1)} s`, "reconnecting");
    else if (event.type === "disconnected") status("disconnected", "disconnected");
    else if (event.type === "closed") {
      if (event.error instanceof AuthFailed) {
        sessionStorage.removeItem(TOKEN_KEY);
        askToken(`the leader refused the token: ${event.error.message}`);
      } else status(event.error ? `closed: ${event.error.message}` : "closed", "closed");
      return;
    }
  }
}

/** @param {Client} client */
async function receive(client) {
  const sub = client.subscribe(SUBJECT, { maxPending: 8 });
  try {
    for await (const message of sub) {
      try {
        render(message.payload);
      } catch (error) {
        console.error("dashboard: a snapshot could not be shown", error);
      }
    }
  } catch (error) {
    const e = /** @type {Error} */ (error);
    status(`${e.name}: ${e.message}`, "failed");
  }
}

// ------------------------------------------------------------------ a snapshot

/** @param {any} snapshot */
function render(snapshot) {
  if (!snapshot || typeof snapshot !== "object" || !snapshot.stats) return;
  const started = performance.now();
  page.snapshots += 1;
  page.lastAt = Date.now();
  if ($("status").className === "silent") status("connected", "connected");
  setReadOnly(Boolean(snapshot.read_only));
  page.scalable = Boolean(snapshot.scalable);
  document.body.classList.toggle("scalable", page.scalable && !page.readOnly);
  text($("node"), String(snapshot.node ?? ""));
  text($("updated"), `as of ${clock(snapshot.at)}`);
  mergeHistory(snapshot.history);
  renderTotals(snapshot.totals ?? {});
  renderCharts();
  renderGroups(snapshot.stats);
  if (page.workersOffset === 0 && !page.workersState) renderWorkers(snapshot.workers);
  renderSubjects(snapshot.stats, snapshot.totals ?? {});
  noteDeadLetters(snapshot);
  document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
  document.body.dataset.snapshots = String(page.snapshots);
}

/** @param {boolean} readOnly */
function setReadOnly(readOnly) {
  page.readOnly = readOnly;
  document.body.classList.toggle("read-only", readOnly);
  $("read-only-badge").hidden = !readOnly;
  for (const button of document.querySelectorAll("button.action")) /** @type {HTMLButtonElement} */ (button).disabled = readOnly;
}

/** @param {any} history */
function mergeHistory(history) {
  if (!history || !Array.isArray(history.at)) return;
  const h = page.history;
  const names = Object.keys(h);
  if (history.full) for (const name of names) h[name] = [];
  const last = h.at.length ? h.at[h.at.length - 1] : -Infinity;
  for (let i = 0; i < history.at.length; i++) {
    if (!(history.at[i] > last)) continue;
    for (const name of names) h[name].push(Array.isArray(history[name]) ? history[name][i] : null);
  }
  if (h.at.length > HISTORY) for (const name of names) h[name] = h[name].slice(-HISTORY);
}

/** @param {any} totals */
function renderTotals(totals) {
  const h = page.history;
  const n = h.at.length - 1;
  const finished = n >= 0 ? (h.done[n] ?? 0) + (h.failed[n] ?? 0) : null;
  const values = {
    waiting: count(totals.waiting),
    in_flight: count(totals.in_flight),
    throughput: count(finished),
    p50: n >= 0 ? seconds(h.p50[n]) : "–",
    p99: n >= 0 ? seconds(h.p99[n]) : "–",
    workers_online: count(totals.workers_online),
    workers_stale: count(totals.workers_stale),
    workers_offline: count(totals.workers_offline),
    connections: count(totals.connections),
    done: count(totals.done),
    failed: count(totals.failed),
    dead_letters: count(totals.dead_letters),
  };
  for (const [name, value] of Object.entries(values)) text($(`t-${name}`), value);
}

function renderCharts() {
  const h = page.history;
  draw("chart-queue", [h.queued, h.in_flight], count);
  draw("chart-throughput", [h.done, h.failed], (v) => `${count(v)}/s`);
  draw("chart-latency", [h.p50, h.p99], seconds);
}

/**
 * Draw series as lines, the newest at the right edge (a null leaves a gap).
 * @param {string} id @param {any[][]} series @param {(v: number) => string} format
 */
function draw(id, series, format) {
  const svg = $(id);
  let top = 0;
  for (const values of series) for (const v of values) if (typeof v === "number" && v > top) top = v;
  const scale = top > 0 ? top : 1;
  const paths = svg.querySelectorAll("path");
  series.forEach((values, k) => {
    let d = "";
    let pen = false;
    const shift = HISTORY - values.length;
    values.forEach((v, i) => {
      if (typeof v !== "number" || !Number.isFinite(v)) {
        pen = false;
        return;
      }
      const x = ((shift + i) / (HISTORY - 1)) * 600;
      const y = 78 - (v / scale) * 74;
      d += `${pen ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
      pen = true;
    });
    paths[k]?.setAttribute("d", d);
  });
  text($(`${id}-note`), top > 0 ? `max ${format(top)} over ${Math.round(series[0].length / 60) || "<1"} min` : "");
}

// Groups -------------------------------------------------------------------------

const groupRows = new Rows(
  /** @type {HTMLTableElement} */ ($("groups")).tBodies[0],
  ["name", "", "num", "num", "num", "num", "num", "num", "num", "num", "name", "scale-column"],
  (row, key) => {
    const form = document.createElement("form");
    form.className = "scale action";
    const input = document.createElement("input");
    input.type = "number";
    input.min = "0";
    input.max = "1000";
    input.required = true;
    input.className = "narrow";
    input.setAttribute("aria-label", "instances");
    const button = document.createElement("button");
    button.className = "action";
    button.textContent = "Scale";
    form.append(input, button);
    form.onsubmit = (event) => {
      event.preventDefault();
      scale(key, Number(input.value), button);
    };
    cell(row, 11).append(form);
  },
);

/** @param {any} stats */
function renderGroups(stats) {
  const groups = Object.entries(stats.groups ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  groupRows.update(groups, ([name]) => name, (row, [name, g]) => {
    textCut(cell(row, 0), name);
    const stale = g.workers_stale ?? 0;
    const state = g.state ?? (g.workers > 0 ? (stale ? `${stale} stale` : "up") : "no workers");
    textCut(cell(row, 1), state);
    cell(row, 1).className = g.workers > 0 ? (stale ? "stale" : "online") : "offline";
    // With the count its cluster wants (scaled through the API): "connected / wanted".
    const wanted = typeof g.instances === "number" ? ` / ${count(g.instances)}` : "";
    text(cell(row, 2), `${count(g.workers)}${wanted}${stale ? ` (${count(stale)} stale)` : ""}`);
    const input = /** @type {HTMLInputElement|null} */ (cell(row, 11).querySelector("input"));
    if (input && typeof g.instances === "number") {
      input.placeholder = String(g.instances);
      if (document.activeElement !== input) input.value = String(g.instances);
    }
    text(cell(row, 3), `${count(g.in_flight)} / ${count(g.window)}`);
    text(cell(row, 4), count(g.done));
    text(cell(row, 5), count(g.failed));
    text(cell(row, 6), count(g.dead));
    text(cell(row, 7), count(g.redelivered));
    text(cell(row, 8), seconds(g.latency_p50));
    text(cell(row, 9), seconds(g.latency_p99));
    const patterns = Array.isArray(g.patterns) ? g.patterns.join(", ") : "";
    const more = (g.patterns_total ?? 0) - (g.patterns?.length ?? 0);
    textCut(cell(row, 10), more > 0 ? `${patterns} (+${more})` : patterns);
  });
  const omitted = stats.groups_omitted ?? 0;
  text($("groups-note"), omitted ? `the ${groups.length} busiest; ${count(omitted)} more` : "");
}

/** @param {string} group @param {number} instances @param {HTMLButtonElement} button */
async function scale(group, instances, button) {
  if (page.readOnly) return;
  button.disabled = true;
  try {
    const answer = await api("PUT", `/api/groups/${encodeURIComponent(group)}`, { instances });
    notice(`group ${cut(group)}: ${count(answer?.instances ?? instances)} instances`, "ok");
  } catch (error) {
    notice(`scaling ${cut(group)} failed: ${/** @type {Error} */ (error).message}`, "error");
  } finally {
    button.disabled = page.readOnly;
  }
}

// Workers -------------------------------------------------------------------------

const workerRows = new Rows(
  /** @type {HTMLTableElement} */ ($("workers")).tBodies[0],
  ["name", "name", "", "name", "num", "name", "num", "", "", ""],
);

/** @param {any} listing the answer of worker_list: {total, offset, limit, workers} */
function renderWorkers(listing) {
  if (!listing || !Array.isArray(listing.workers)) return;
  workerRows.update(listing.workers, (w) => JSON.stringify([w.group, w.name, w.state === "offline" ? w.left_at : null]), (row, w) => {
    textCut(cell(row, 0), w.name);
    textCut(cell(row, 1), w.group);
    text(cell(row, 2), String(w.state ?? ""));
    cell(row, 2).className = String(w.state ?? "");
    const subjects = Array.isArray(w.subjects) ? w.subjects.join(", ") : "";
    const more = (w.subjects_total ?? 0) - (w.subjects?.length ?? 0);
    textCut(cell(row, 3), more > 0 ? `${subjects} (+${more})` : subjects);
    text(cell(row, 4), `${count(w.in_flight)} / ${count(w.window)}`);
    textCut(cell(row, 5), w.host ?? "–");
    text(cell(row, 6), w.pid == null ? "–" : String(w.pid));
    textCut(cell(row, 7), w.peer ?? "–");
    text(cell(row, 8), clock(w.connected_at));
    text(cell(row, 9), w.state === "offline" ? `left ${ago(w.left_at)}` : ago(w.last_heard));
  });
  page.workersTotal = listing.total ?? listing.workers.length;
  const first = listing.workers.length ? page.workersOffset + 1 : 0;
  const last = page.workersOffset + listing.workers.length;
  text($("workers-page"), `${count(first)}–${count(last)} of ${count(page.workersTotal)}`);
  /** @type {HTMLButtonElement} */ ($("workers-prev")).disabled = page.workersOffset === 0;
  /** @type {HTMLButtonElement} */ ($("workers-next")).disabled = last >= page.workersTotal;
}

/** Another page of workers (or the first one filtered), from the API. @param {number} offset */
async function loadWorkers(offset) {
  page.workersOffset = Math.max(0, offset);
  page.workersState = /** @type {HTMLSelectElement} */ ($("workers-state")).value;
  if (page.workersOffset === 0 && !page.workersState) {
    text($("workers-note"), "");
    return; // (the snapshots carry the first page)
  }
  const query = new URLSearchParams({ offset: String(page.workersOffset), limit: String(WORKER_PAGE) });
  if (page.workersState) query.set("state", page.workersState);
  try {
    renderWorkers(await api("GET", `/api/workers?${query}`));
    text($("workers-note"), `as of ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    notice(`the workers could not be listed: ${/** @type {Error} */ (error).message}`, "error");
  }
}

// Subjects ------------------------------------------------------------------------

const subjectRows = new Rows(
  /** @type {HTMLTableElement} */ ($("subjects")).tBodies[0],
  ["name", "num", "num", "num", "num", "num", "num", "num", "num", "num", "num", "num"],
);

/** @param {any} stats @param {any} totals */
function renderSubjects(stats, totals) {
  // The busiest first (waiting and in flight), then by name.
  const busy = (/** @type {any} */ s) => (s.queued ?? 0) + (s.in_flight ?? 0);
  const subjects = Object.entries(stats.subjects ?? {}).sort(
    ([a, s], [b, t]) => busy(t) - busy(s) || (a < b ? -1 : a > b ? 1 : 0),
  );
  subjectRows.update(subjects, ([name]) => name, (row, [name, s]) => {
    textCut(cell(row, 0), name);
    text(cell(row, 1), count(s.queued));
    text(cell(row, 2), count(s.in_flight));
    text(cell(row, 3), count(s.submitted));
    text(cell(row, 4), count(s.done));
    text(cell(row, 5), count(s.failed));
    text(cell(row, 6), count(s.dead));
    text(cell(row, 7), count(s.expired));
    text(cell(row, 8), count(s.cancelled));
    text(cell(row, 9), count(s.workers));
    text(cell(row, 10), seconds(s.latency_p50));
    text(cell(row, 11), seconds(s.latency_p99));
  });
  const omitted = stats.subjects_omitted ?? 0;
  text($("subjects-note"), omitted ? `the ${subjects.length} busiest of ${count(totals.subjects ?? subjects.length + omitted)}` : "");
}

// Dead letters ----------------------------------------------------------------------

const deadRows = new Rows(
  /** @type {HTMLTableElement} */ ($("dead-letters")).tBodies[0],
  ["", "name", "name", "num", "value error", "action-column"],
  (row, key) => {
    const look = document.createElement("button");
    look.type = "button";
    look.className = "link";
    look.onclick = () => lookUp(key);
    cell(row, 1).append(look);
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "action retry";
    retry.textContent = "Retry";
    retry.disabled = page.readOnly;
    retry.onclick = () => retryDeadLetter(key, retry);
    cell(row, 5).append(retry);
  },
);

/** Load the dead letters again when the snapshot says they changed (at most every 2 s). @param {any} snapshot */
function noteDeadLetters(snapshot) {
  const t = snapshot.totals ?? {};
  const signature = `${t.dead_letters}/${t.dead}`;
  if (signature === page.deadSignature || page.deadForbidden) return;
  page.deadSignature = signature;
  if (page.deadTimer) return;
  const wait = Math.max(0, page.deadLoadedAt + DEAD_RELOAD - Date.now());
  page.deadTimer = setTimeout(() => {
    page.deadTimer = null;
    loadDeadLetters();
  }, wait);
}

async function loadDeadLetters() {
  page.deadLoadedAt = Date.now();
  const query = new URLSearchParams({ offset: String(page.deadOffset), limit: String(DEAD_PAGE) });
  let listing;
  try {
    listing = await api("GET", `/api/dead-letters?${query}`);
  } catch (error) {
    const e = /** @type {Error & {status?: number}} */ (error);
    if (e.status === 403) {
      page.deadForbidden = true;
      text($("dead-total"), "(for admins only)");
    } else {
      text($("dead-total"), `(could not be listed: ${cut(e.message)})`);
    }
    return;
  }
  if (!listing || !Array.isArray(listing.dead_letters)) return;
  page.deadTotal = listing.total ?? 0;
  deadRows.update(listing.dead_letters, (d) => String(d.job_id), (row, d) => {
    text(cell(row, 0), clock(d.dead_at));
    const look = /** @type {HTMLButtonElement} */ (cell(row, 1).firstChild);
    textCut(look, d.job_id);
    textCut(cell(row, 2), d.subject);
    text(cell(row, 3), count(d.attempts));
    const error = d.error_type ? `${d.error_type}: ${d.error_message ?? ""}` : String(d.error_message ?? "");
    textCut(cell(row, 4), error);
  });
  const first = listing.dead_letters.length ? page.deadOffset + 1 : 0;
  const last = page.deadOffset + listing.dead_letters.length;
  text($("dead-total"), `(${count(page.deadTotal)})`);
  text($("dead-page"), `${count(first)}–${count(last)} of ${count(page.deadTotal)}, newest first`);
  /** @type {HTMLButtonElement} */ ($("dead-prev")).disabled = page.deadOffset === 0;
  /** @type {HTMLButtonElement} */ ($("dead-next")).disabled = last >= page.deadTotal;
}

/** @param {string} jobId @param {HTMLButtonElement} button */
async function retryDeadLetter(jobId, button) {
  if (page.readOnly) return;
  button.disabled = true;
  try {
    await api("POST", `/api/dead-letters/${encodeURIComponent(jobId)}/retry`);
    notice(`job ${cut(jobId)} is queued again`, "ok");
    await loadDeadLetters();
  } catch (error) {
    notice(`retrying ${cut(jobId)} failed: ${/** @type {Error} */ (error).message}`, "error");
    button.disabled = page.readOnly;
  }
}

/** Refused dead letters whose reasons the API lists at most (one each). */
const REFUSED_LISTED = 10;

/**
 * What a retry of every dead letter did: how many were retried, refused (with their
 * reasons, each once) and left.
 * @param {any} answer {retried, refused: string[] (a reason per refused letter, ten at most), remaining}
 */
function retriedText(answer) {
  const refused = Array.isArray(answer?.refused) ? answer.refused : [];
  let line = `retried ${count(answer?.retried)}, `;
  if (!refused.length) line += "none refused";
  else {
    const reasons = [...new Set(refused.map((r) => cut(String(r))))];
    const more = refused.length >= REFUSED_LISTED ? " or more" : "";
    line += `${count(refused.length)}${more} refused (${reasons.join("; ")})`;
  }
  return `${line}, ${count(answer?.remaining)} left`;
}

async function retryAll() {
  if (page.readOnly || !confirm("Retry every dead letter?")) return;
  try {
    const answer = await api("POST", "/api/dead-letters/retry");
    notice(retriedText(answer), answer?.refused?.length ? "error" : "ok");
  } catch (error) {
    notice(`retrying the dead letters failed: ${/** @type {Error} */ (error).message}`, "error");
  }
  page.deadOffset = 0;
  await loadDeadLetters();
}

// A job ---------------------------------------------------------------------------

/** Show a job (what the API says of it). @param {string} jobId @param {boolean} [keepNotice] */
async function lookUp(jobId, keepNotice = false) {
  const id = jobId.trim();
  if (!id) return;
  page.jobId = id;
  /** @type {HTMLInputElement} */ ($("job-id")).value = id;
  let job;
  try {
    job = await api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    const e = /** @type {Error & {status?: number}} */ (error);
    $("job").hidden = true;
    $("job-cancel").hidden = true;
    notice(e.status === 404 ? `no job ${cut(id)} (or not yours to see)` : `looking up ${cut(id)} failed: ${e.message}`, "error");
    return;
  }
  if (page.jobId !== id || !job) return;
  if (!keepNotice) notice("");
  text($("job-job_id"), String(job.job_id ?? id));
  textCut($("job-subject"), job.subject ?? "–");
  text($("job-state"), String(job.state ?? "–"));
  text($("job-attempts"), job.max_attempts ? `${count(job.attempts)} of ${count(job.max_attempts)}` : count(job.attempts));
  textCut($("job-worker"), job.worker ?? "–");
  for (const name of ["submitted_at", "started_at", "finished_at"]) text($(`job-${name}`), clock(job[name]));
  const error = job.error;
  text($("job-error"), error ? shown(typeof error === "object" ? `${error.code ?? error.type ?? "error"}: ${error.message ?? ""}` : error) : "–");
  const truncated = job.truncated ? " (truncated)" : "";
  text($("job-result"), job.result === undefined || job.result === null ? `–${truncated}` : `${shown(job.result)}${truncated}`);
  $("job").hidden = false;
  const cancel = /** @type {HTMLButtonElement} */ ($("job-cancel"));
  cancel.hidden = !LIVE_STATES.has(job.state);
  cancel.disabled = page.readOnly;
}

async function cancelJob() {
  const id = page.jobId;
  if (!id || page.readOnly) return;
  try {
    await api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
    notice(`job ${cut(id)} cancelled`, "ok");
  } catch (error) {
    notice(`cancelling ${cut(id)} failed: ${/** @type {Error} */ (error).message}`, "error");
  }
  await lookUp(id, true);
}

// ------------------------------------------------------------------ wiring

$("login").onsubmit = (event) => {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("token"));
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  connect();
};
$("forget-token").onclick = () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
};
$("lookup").onsubmit = (event) => {
  event.preventDefault();
  lookUp(/** @type {HTMLInputElement} */ ($("job-id")).value);
};
$("job-cancel").onclick = () => cancelJob();
$("workers-prev").onclick = () => loadWorkers(page.workersOffset - WORKER_PAGE);
$("workers-next").onclick = () => loadWorkers(page.workersOffset + WORKER_PAGE);
$("workers-state").onchange = () => loadWorkers(0);
$("dead-prev").onclick = () => {
  page.deadOffset = Math.max(0, page.deadOffset - DEAD_PAGE);
  loadDeadLetters();
};
$("dead-next").onclick = () => {
  page.deadOffset += DEAD_PAGE;
  loadDeadLetters();
};
$("dead-retry-all").onclick = () => retryAll();

// A leader that stops sending (stuck, or the connection silently gone) shows as such.
setInterval(() => {
  if (!page.lastAt) return;
  const silent = (Date.now() - page.lastAt) / 1000;
  if (silent > 3.5) status(`no snapshot for ${Math.round(silent)} s`, "silent");
}, 1000);

connect();
