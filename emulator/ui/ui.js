// The emulator's dashboard (docs/controls.md "Dashboard"): plain DOM, no framework, nothing from the internet.
// Data: GET /emulator/inventory every 2 s, the request log's SSE stream, the lifecycle API for actions.
"use strict";

const REFRESH_MS = 2000;
const MAX_REQUEST_ROWS = 200;
const state = { selected: null, selectedPid: null, lastSeq: 0, inventory: null };

function headers(extra) {
  const key = document.getElementById("api-key").value || sessionStorage.getItem("tle-key") || "";
  return Object.assign(key ? { authorization: "Bearer " + key } : {}, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "content-type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? wrapCell(c) : el("td", c));
  return tr;
}

function wrapCell(node) {
  if (node.tagName === "TD") return node;
  const td = el("td");
  td.appendChild(node);
  return td;
}

function age(ms, now) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d";
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function replaceBody(table, rows) {
  const tbody = document.querySelector("#" + table + " tbody");
  tbody.replaceChildren(...rows);
}

// ---- sandboxes -------------------------------------------------------------------------------------

const ACTIONS = {
  running: ["suspend", "checkpoint", "terminate"],
  suspended: ["resume", "terminate"],
  pending: ["terminate"], suspending: ["terminate"], snapshotting: ["terminate"],
};

function actionButtons(sb) {
  const td = el("td");
  for (const action of ACTIONS[sb.status] || []) {
    const b = el("button", action);
    b.dataset.action = action;
    b.dataset.id = sb.id;
    b.addEventListener("click", (ev) => { ev.stopPropagation(); act(action, sb); });
    td.appendChild(b);
  }
  return td;
}

async function act(action, sb) {
  const base = "/v1/namespaces/" + encodeURIComponent(sb.namespace) + "/sandboxes/" + encodeURIComponent(sb.id);
  const note = document.getElementById("action-result");
  note.textContent = action + " " + sb.id + "…";
  try {
    if (action === "terminate") await api("DELETE", base);
    else if (action === "checkpoint") {
      const snap = await api("POST", base + "/snapshot");
      note.textContent = "checkpoint " + sb.id + ": snapshot " + (snap.snapshot_id || snap.id) + " started";
    } else await api("POST", base + "/" + action);
    if (action !== "checkpoint") note.textContent = action + " " + sb.id + ": done";
  } catch (err) {
    note.textContent = action + " " + sb.id + " failed: " + err.message;
  }
  refresh();
}

function renderSandboxes(inv) {
  const rows = inv.sandboxes.map((sb) => {
    const status = el("span", sb.status, "state " + sb.status);
    const reason = sb.status === "pending" ? sb.pending_reason : sb.termination_reason;
    const tr = row([el("td", sb.id, "id"), sb.name || "", sb.namespace, status, reason || "",
      sb.resources.cpus, sb.resources.memory_mb + " MiB", age(sb.created_at, inv.now_ms), actionButtons(sb)]);
    tr.dataset.id = sb.id;
    if (sb.id === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => select(sb.id));
    return tr;
  });
  replaceBody("sandboxes", rows);
  const live = inv.sandboxes.filter((s) => s.status !== "terminated").length;
  document.getElementById("sandbox-count").textContent = live + " live, " + inv.sandboxes.length + " in all";
}

// ---- one sandbox's processes -----------------------------------------------------------------------

function select(id) {
  state.selected = id;
  state.selectedPid = null;
  document.getElementById("output").textContent = "";
  document.getElementById("output-pid").textContent = "";
  for (const tr of document.querySelectorAll("#sandboxes tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  loadProcesses();
}

async function loadProcesses() {
  const id = state.selected;
  if (!id) return;
  document.getElementById("detail-section").hidden = false;
  document.getElementById("detail-id").textContent = id;
  const note = document.getElementById("processes-note");
  try {
    const data = await api("GET", "/emulator/sandboxes/" + encodeURIComponent(id) + "/processes");
    const procs = data.processes || [];
    replaceBody("processes", procs.map((p) => {
      const cmd = [p.command].concat(p.args || []).join(" ");
      const tr = row([p.pid, el("span", p.status, "state " + p.status), el("td", cmd, "path"),
        p.exit_code === null || p.exit_code === undefined ? (p.signal ? "signal " + p.signal : "") : p.exit_code,
        age(p.started_at, Date.now())]);
      tr.dataset.pid = p.pid;
      if (String(p.pid) === String(state.selectedPid)) tr.classList.add("selected");
      tr.addEventListener("click", () => { state.selectedPid = p.pid; loadOutput(); });
      return tr;
    }));
    note.textContent = procs.length ? "" : "no processes";
    if (state.selectedPid !== null) loadOutput();
  } catch (err) {
    replaceBody("processes", []);
    note.textContent = err.message;
  }
}

async function loadOutput() {
  const id = state.selected, pid = state.selectedPid;
  document.getElementById("output-pid").textContent = "pid " + pid;
  for (const tr of document.querySelectorAll("#processes tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.pid === String(pid));
  }
  try {
    const data = await api("GET", "/emulator/sandboxes/" + encodeURIComponent(id) + "/processes/" +
      encodeURIComponent(pid) + "/output");
    document.getElementById("output").textContent = (data.lines || []).join("\n");
  } catch (err) {
    document.getElementById("output").textContent = err.message;
  }
}

// ---- snapshots, pools, file systems ----------------------------------------------------------------

function renderSnapshots(inv) {
  replaceBody("snapshots", inv.snapshots.map((s) => row([el("td", s.id, "id"), el("td", s.sandbox_id, "id"),
    s.snapshot_type, el("span", s.status, "state " + s.status), bytes(s.size_bytes), age(s.created_at, inv.now_ms)])));
  document.getElementById("snapshot-count").textContent = inv.snapshots.length;
}

function renderPools(inv) {
  replaceBody("pools", inv.pools.map((p) => {
    const containers = p.containers || [];
    const idle = containers.filter((c) => c.state === "Idle").length;
    return row([el("td", p.id, "id"), p.namespace, p.image, p.warm_containers, p.max_containers === null ? "—" :
      p.max_containers, idle + " idle, " + (containers.length - idle) + " claimed"]);
  }));
  document.getElementById("pool-count").textContent = inv.pools.length;
}

async function loadFileSystems() {
  const note = document.getElementById("file-systems-note");
  try {
    const data = await api("GET", "/emulator/file-systems");
    const list = (data && (data.file_systems || data.filesystems)) || [];
    replaceBody("file-systems", list.map((f) => row([el("td", f.id || f.file_system_id || f.name, "id"),
      f.namespace || "", el("td", JSON.stringify(f), "path")])));
    note.textContent = list.length ? "" : "none";
  } catch (err) {
    note.textContent = err.status === 404 ? "not served by this emulator" : err.message;
  }
}

// ---- refresh ---------------------------------------------------------------------------------------

async function refresh() {
  try {
    const inv = await api("GET", "/emulator/inventory");
    state.inventory = inv;
    renderSandboxes(inv);
    renderSnapshots(inv);
    renderPools(inv);
    const live = inv.sandboxes.filter((s) => s.status === "running").length;
    document.getElementById("summary").textContent = live + " running · " + inv.snapshots.length +
      " snapshots · " + inv.pools.length + " pools";
    document.getElementById("clock").textContent = "emulator time " + new Date(inv.now_ms).toISOString();
    document.body.dataset.loaded = "1";
  } catch (err) {
    document.getElementById("summary").textContent = "error: " + err.message +
      (err.status === 401 ? " (enter the API key)" : "");
  }
  if (state.selected) loadProcesses();
}

// ---- the request log, live -------------------------------------------------------------------------

function addRequest(entry) {
  if (entry.seq <= state.lastSeq) return;
  state.lastSeq = entry.seq;
  const tbody = document.querySelector("#requests tbody");
  const cls = "s" + String(entry.status)[0];
  const tr = row([entry.seq, new Date(entry.time_ms).toLocaleTimeString(), entry.port, entry.method,
    el("td", entry.path + (entry.query ? "?" + entry.query : ""), "path"), el("td", entry.sandbox || "", "id"),
    el("td", entry.status, cls), Number(entry.latency_ms).toFixed(1)]);
  tr.className = "new";
  setTimeout(() => tr.classList.remove("new"), 1500);
  tbody.insertBefore(tr, tbody.firstChild);
  while (tbody.children.length > MAX_REQUEST_ROWS) tbody.removeChild(tbody.lastChild);
}

async function followRequests() {
  const label = document.getElementById("stream-state");
  for (;;) {
    try {
      const resp = await fetch("/emulator/requests/stream?after=" + state.lastSeq, { headers: headers() });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      label.textContent = "live";
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (line.startsWith("data: ")) addRequest(JSON.parse(line.slice(6)));
          }
        }
      }
    } catch (err) {
      label.textContent = "reconnecting (" + err.message + ")";
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function start() {
  const key = document.getElementById("api-key");
  key.value = sessionStorage.getItem("tle-key") || "";
  key.addEventListener("change", () => { sessionStorage.setItem("tle-key", key.value); refresh(); });
  try {
    const recent = await api("GET", "/emulator/requests?limit=" + MAX_REQUEST_ROWS);
    for (const entry of recent.requests) addRequest(entry);
  } catch (err) { /* the stream below says what is wrong */ }
  await refresh();
  loadFileSystems();
  setInterval(refresh, REFRESH_MS);
  setInterval(loadFileSystems, 5 * REFRESH_MS);
  followRequests();
}

document.addEventListener("DOMContentLoaded", start);
