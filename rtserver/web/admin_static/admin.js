// rtserver admin UI: plain JavaScript, no build step, nothing loaded from elsewhere.
// The session token is kept in sessionStorage and sent only in the Authorization header.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "rtserver-admin-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let statusTimer = null;
let watchAbort = null;

// Server API methods and the fields of their forms.
const METHODS = {
  publish: [["channel", "text"], ["data", "json", '{"text": "hello"}'], ["idempotency_key", "text"], ["skip_history", "bool"]],
  broadcast: [["channels", "list"], ["data", "json", '{"text": "hello"}'], ["idempotency_key", "text"], ["skip_history", "bool"]],
  subscribe: [["user", "text"], ["channel", "text"], ["client", "text"], ["session", "text"]],
  unsubscribe: [["user", "text"], ["channel", "text"], ["client", "text"], ["session", "text"]],
  disconnect: [["user", "text"], ["client", "text"], ["session", "text"]],
  refresh: [["user", "text"], ["client", "text"], ["session", "text"], ["expired", "bool"], ["expire_at", "int"]],
  presence: [["channel", "text"]],
  presence_stats: [["channel", "text"]],
  history: [["channel", "text"], ["limit", "int", "10"], ["reverse", "bool"]],
  history_remove: [["channel", "text"]],
  channels: [["pattern", "text"]],
  info: [],
  batch: [["commands", "json", '[{"publish": {"channel": "news", "data": {}}}]'], ["parallel", "bool"]],
};

async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "token " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && path !== "admin/auth") {
    logout();
    throw new Error("not logged in");
  }
  return response;
}

async function api(method, params) {
  const response = await call("admin/api/" + method, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(params),
  });
  return response.json();
}

// --- login ------------------------------------------------------------------------

function showLogin() {
  $("#app").hidden = true;
  $("#nav").hidden = true;
  $("#login").hidden = false;
  $("#password").focus();
}

function showApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#nav").hidden = false;
  show("status");
}

function logout() {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stopWatch();
  clearInterval(statusTimer);
  statusTimer = null;
  showLogin();
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new URLSearchParams({ password: $("#password").value });
  const response = await fetch("admin/auth", { method: "POST", body });
  if (!response.ok) {
    const error = $("#login-error");
    error.textContent = response.status === 401 ? "Wrong password."
      : response.status === 429 ? "Too many failed logins: retry in " + response.headers.get("Retry-After") + " s."
      : "Login failed (" + response.status + ").";
    error.hidden = false;
    return;
  }
  token = (await response.json()).token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login-error").hidden = true;
  $("#password").value = "";
  showApp();
});

$("#logout").addEventListener("click", logout);

// --- pages ------------------------------------------------------------------------

function show(page) {
  for (const button of document.querySelectorAll("nav button[data-page]")) {
    button.classList.toggle("active", button.dataset.page === page);
  }
  for (const section of document.querySelectorAll(".page")) {
    section.hidden = section.id !== "page-" + page;
  }
  clearInterval(statusTimer);
  statusTimer = null;
  if (page === "status" || page === "connections") {
    refreshStatus();
    statusTimer = setInterval(refreshStatus, 2000);
  }
}

for (const button of document.querySelectorAll("nav button[data-page]")) {
  button.addEventListener("click", () => show(button.dataset.page));
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function uptime(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

async function refreshStatus() {
  let status;
  try {
    status = await (await call("admin/status")).json();
  } catch (e) {
    $("#status-updated").textContent = $("#connections-updated").textContent = "(" + e.message + ")";
    return;
  }
  fill($("#nodes tbody"), status.nodes.map((node) => [
    node.name + (node.uid === status.node ? " (this node)" : ""), node.version, uptime(node.uptime),
    node.num_clients, node.num_users, node.num_subs, node.num_channels,
  ]), 7, "no node answered");
  const summary = $("#summary");
  summary.replaceChildren();
  item(summary, "Engine", status.engine.type + (status.engine.healthy ? " (healthy)" : " (unavailable)"),
    status.engine.healthy ? "ok" : "bad");
  showConnections(status);
  const updated = "updated " + new Date().toLocaleTimeString();
  $("#status-updated").textContent = updated;
  $("#connections-updated").textContent = updated;
}

// A term and its value in a <dl>.
function item(list, term, value, cls) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  if (cls) dd.className = cls;
  list.append(dt, dd);
}

// A table body, or one row saying there is nothing yet.
function fill(body, rows, columns, empty) {
  body.replaceChildren();
  if (!rows.length) {
    const row = document.createElement("tr");
    cell(row, empty).colSpan = columns;
    row.className = "empty";
    body.appendChild(row);
  }
  for (const values of rows) {
    const row = document.createElement("tr");
    for (const value of values) cell(row, value);
    body.appendChild(row);
  }
}

function showConnections(status) {
  const sum = (key) => status.nodes.reduce((n, node) => n + node[key], 0);
  const totals = $("#totals");
  totals.replaceChildren();
  item(totals, "Clients in the cluster", sum("num_clients"));
  item(totals, "Users in the cluster", sum("num_users"));
  item(totals, "Subscriptions in the cluster", sum("num_subs"));
  item(totals, "Open connections on this node", status.connections.open);
  fill($("#transports tbody"), Object.entries(status.connections.accepted), 2, "no connection accepted yet");
  const errors = (method) => status.api_errors.filter((e) => e.method === method).reduce((n, e) => n + e.count, 0);
  fill($("#api-stats tbody"), Object.entries(status.api).map(([method, entry]) => [
    method, entry.count, (1000 * entry.seconds / Math.max(entry.count, 1)).toFixed(2) + " ms", errors(method),
  ]), 4, "no server API call yet");
}

// --- actions ----------------------------------------------------------------------

function buildFields() {
  const fields = $("#fields");
  fields.replaceChildren();
  for (const [name, type, initial] of METHODS[$("#method").value]) {
    const label = document.createElement("label");
    const span = document.createElement("span");
    span.textContent = name + (type === "json" ? " (JSON)" : type === "list" ? " (comma separated)" : "");
    let input;
    if (type === "json") {
      input = document.createElement("textarea");
    } else {
      input = document.createElement("input");
      input.type = type === "bool" ? "checkbox" : type === "int" ? "number" : "text";
    }
    input.name = name;
    input.dataset.type = type;
    if (initial !== undefined) input.value = initial;
    label.append(span, input);
    fields.appendChild(label);
  }
}

function collectParams() {
  const params = {};
  for (const input of document.querySelectorAll("#fields [name]")) {
    const type = input.dataset.type;
    if (type === "bool") {
      if (input.checked) params[input.name] = true;
    } else if (input.value.trim() === "") {
      continue;
    } else if (type === "json") {
      params[input.name] = JSON.parse(input.value);
    } else if (type === "int") {
      params[input.name] = parseInt(input.value, 10);
    } else if (type === "list") {
      params[input.name] = input.value.split(",").map((s) => s.trim()).filter(Boolean);
    } else {
      params[input.name] = input.value;
    }
  }
  return params;
}

for (const name of Object.keys(METHODS)) {
  const option = document.createElement("option");
  option.value = option.textContent = name;
  $("#method").appendChild(option);
}
$("#method").addEventListener("change", buildFields);
buildFields();

$("#action-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let params;
  try {
    params = collectParams();
  } catch (e) {
    $("#reply").textContent = "Invalid JSON in a field: " + e.message;
    return;
  }
  try {
    $("#reply").textContent = JSON.stringify(await api($("#method").value, params), null, 2);
  } catch (e) {
    $("#reply").textContent = "Request failed: " + e.message;
  }
});

// --- channel inspector ------------------------------------------------------------

function addEvent(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  const list = $("#events");
  list.appendChild(li);
  while (list.children.length > 500) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

function showPresence(presence) {
  const body = $("#presence tbody");
  body.replaceChildren();
  for (const [client, info] of Object.entries(presence)) {
    const row = document.createElement("tr");
    cell(row, client);
    cell(row, info.user || "(anonymous)");
    body.appendChild(row);
  }
}

function handleLine(message) {
  if (message.subscribed) {
    const s = message.subscribed;
    $("#watch-state").textContent = "following " + s.channel;
    $("#presence-note").textContent = s.presence ? "" : "Presence is off for this channel.";
    addEvent("info", "following " + s.channel + (s.join_leave ? "" : " (join/leave off for this channel)"));
  } else if (message.push) {
    const push = message.push;
    if (push.pub) {
      const who = push.pub.info ? " from " + (push.pub.info.user || push.pub.info.client) : "";
      const offset = push.pub.offset ? " #" + push.pub.offset : "";
      addEvent("pub", JSON.stringify(push.pub.data) + who + offset);
    } else if (push.join) {
      addEvent("join", (push.join.info.user || "(anonymous)") + " " + push.join.info.client);
    } else if (push.leave) {
      addEvent("leave", (push.leave.info.user || "(anonymous)") + " " + push.leave.info.client);
    }
  } else if (message.presence) {
    showPresence(message.presence);
  } else if (message.dropped) {
    addEvent("info", message.dropped + " messages dropped (reading too slowly)");
  } else if (message.error) {
    addEvent("info", "error " + message.error.code + ": " + message.error.message);
  }
}

function stopWatch() {
  if (watchAbort) watchAbort.abort();
  watchAbort = null;
  $("#watch").disabled = false;
  $("#unwatch").disabled = true;
}

async function watch(channel) {
  stopWatch();
  $("#events").replaceChildren();
  showPresence({});
  watchAbort = new AbortController();
  $("#watch").disabled = true;
  $("#unwatch").disabled = false;
  $("#watch-state").textContent = "connecting";
  try {
    const response = await call("admin/channel?channel=" + encodeURIComponent(channel), { signal: watchAbort.signal });
    if (!response.ok) {
      const reply = await response.json();
      addEvent("info", "cannot follow: " + (reply.error.message || reply.error));
      stopWatch();
      $("#watch-state").textContent = "";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.trim()) handleLine(JSON.parse(line));
      }
    }
    $("#watch-state").textContent = "stream ended";
  } catch (e) {
    $("#watch-state").textContent = e.name === "AbortError" ? "stopped" : "stream failed: " + e.message;
  }
  stopWatch();
}

$("#watch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  watch($("#watch-channel").value.trim());
});
$("#unwatch").addEventListener("click", stopWatch);

$("#quick-publish").addEventListener("submit", async (event) => {
  event.preventDefault();
  let data;
  try {
    data = JSON.parse($("#quick-data").value);
  } catch (e) {
    $("#quick-result").textContent = "not JSON: " + e.message;
    return;
  }
  const reply = await api("publish", { channel: $("#watch-channel").value.trim(), data });
  $("#quick-result").textContent = reply.error ? "error " + reply.error.code + ": " + reply.error.message
    : "published" + (reply.result && reply.result.offset ? " #" + reply.result.offset : "");
});

// --- start ------------------------------------------------------------------------

(async () => {
  const init = await (await call("admin/init")).json();
  if (init.authenticated || init.insecure) showApp();
  else showLogin();
})();
