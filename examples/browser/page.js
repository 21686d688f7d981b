// What both example pages share: which leader to connect to, and the connection status.

/**
 * The leader's WebSocket URL: `?ws=...` in the page's address, else the one the leader
 * that served the page wrote into `<meta name="actors-leader">`, else "" (type it in).
 */
export function leaderUrl() {
  const asked = new URLSearchParams(location.search).get("ws");
  if (asked) return asked;
  let url = document.querySelector('meta[name="actors-leader"]')?.getAttribute("content") ?? "";
  // A listener on every address (0.0.0.0, [::]): the host this page came from.
  return url.replace(/^(wss?:\/\/)(0\.0\.0\.0|\[::\])(?=[:/]|$)/, (_, scheme) => scheme + location.hostname);
}

/** Show `text` in the status badge, styled by `kind` (connected, reconnecting, closed...). */
export function showStatus(text, kind) {
  const badge = document.getElementById("status");
  badge.textContent = text;
  badge.className = kind;
}

/** Follow a client's (or a worker's) `status()` events in the badge until it closes. */
export async function followStatus(events) {
  for await (const event of events) {
    if (event.type === "connected") showStatus(`connected to ${event.url}`, "connected");
    else if (event.type === "connecting") showStatus(`connecting (attempt ${event.attempt})`, "connecting");
    else if (event.type === "reconnecting") showStatus(`reconnecting in ${(event.delay / 1000).toFixed(1)} s`, "reconnecting");
    else if (event.type === "disconnected") showStatus(`disconnected${event.error ? `: ${event.error.message}` : ""}`, "disconnected");
    else if (event.type === "closed") {
      showStatus(event.error ? `closed: ${event.error.message}` : "closed", "closed");
      return;
    }
  }
}

/** A short text of any JSON-like value. */
export function show(value) {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Append a row of cells (text) to the table body `tbody`; returns the cells. */
export function addRow(tbody, ...texts) {
  const row = tbody.insertRow(0);
  return texts.map((text) => {
    const cell = row.insertCell();
    cell.textContent = text;
    return cell;
  });
}
