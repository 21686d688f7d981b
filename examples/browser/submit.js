// submit.html: a client of the leader. Each job is a handle: its progress an async
// iterator, its result a promise, cancel() a button.
import { Client } from "/actors.js";
import { addRow, followStatus, leaderUrl, show, showStatus } from "/examples/page.js";

const $ = (id) => document.getElementById(id);
/** @type {Client|null} */
let client = null;
let seen = 0;

$("url").value = leaderUrl();
const params = new URLSearchParams(location.search); // ?subject=...&payload=... prefill the form
if (params.get("subject")) {
  $("subject").value = params.get("subject");
  $("payload").value = params.get("payload") ?? (params.get("subject") === "browser.upper" ? '"hi"' : $("payload").value);
}

async function connect() {
  await client?.close();
  client = null;
  $("go").disabled = true;
  const url = $("url").value.trim();
  showStatus(`connecting to ${url}`, "connecting");
  try {
    client = await Client.connect(url, { name: "submit.html" });
  } catch (error) {
    showStatus(`${error.name}: ${error.message}`, "failed");
    return;
  }
  showStatus(`connected to ${url}`, "connected");
  $("go").disabled = false;
  followStatus(client.status());
}

function submit() {
  const subject = $("subject").value.trim();
  let payload;
  try {
    payload = JSON.parse($("payload").value);
  } catch (error) {
    alert(`The payload is not JSON: ${error.message}`);
    return;
  }
  const count = Math.max(1, Math.min(1000, Number($("count").value) || 1));
  for (let i = 0; i < count; i++) track(client.job(subject, payload, { timeout: 120_000 }), subject, payload);
}

/** A row per job: progress as it comes, then the result (or the error), and a cancel button. */
async function track(handle, subject, payload) {
  const [idCell, , , progressCell, resultCell, buttonCell] = addRow($("jobs"), `#${++seen} ${handle.id.slice(0, 8)}`, subject, show(payload), "", "waiting…", "");
  idCell.title = handle.id;
  resultCell.className = "value";
  const bar = progressCell.appendChild(document.createElement("progress"));
  const note = progressCell.appendChild(document.createElement("span"));
  const cancel = buttonCell.appendChild(document.createElement("button"));
  cancel.textContent = "Cancel";
  cancel.onclick = () => handle.cancel("cancelled from submit.html");
  handle.result.then(
    (value) => {
      resultCell.textContent = show(value);
      resultCell.classList.add("ok");
      bar.value = 1;
    },
    (error) => {
      resultCell.textContent = `${error.name}: ${error.message}`;
      resultCell.classList.add("error");
    },
  ).finally(() => cancel.remove());
  for await (const { fraction, note: text } of handle.progress) {
    if (fraction != null) bar.value = fraction;
    note.textContent = text ? ` ${text}` : "";
  }
}

$("connect").onsubmit = (event) => { event.preventDefault(); connect(); };
$("submit").onsubmit = (event) => { event.preventDefault(); if (client) submit(); };
if ($("url").value) connect();
else showStatus("no leader: type its ws:// URL", "failed");
