// The penguin-jobs dashboard: reads the admin API (/v1) with the admin token kept in this
// tab's sessionStorage, refreshes every 5 s, and acts through the same API (replay,
// purge, pause, retry, cancel, acknowledge). No dependencies, nothing from a CDN.
"use strict";

const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
let timer = null;

function token() {
  return sessionStorage.getItem("penguin-jobs-admin-token");
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (response.status === 401) {
    signOut((data && data.error) || "signed out");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error((data && data.error) || ("HTTP " + response.status));
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c === null || c === undefined ? "" : c);
  return node;
}

function when(iso) {
  return iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "-";
}

function fill(id, rows) {
  $(id).replaceChildren(...rows);
}

function button(label, testid, action) {
  return el("button", { "data-testid": testid, onclick: async (e) => {
    e.preventDefault();
    try { await action(); await refresh(); } catch (err) { showError(err); }
  } }, label);
}

function showError(err) {
  if (err && err.message !== "unauthorized") $("error").textContent = err.message;
}

function detail(title, value) {
  $("detail-title").textContent = title;
  $("detail-body").textContent = JSON.stringify(value, null, 2);
  $("detail").showModal();
}

function chart(svgId, points) {
  const svg = $(svgId);
  const w = 300, h = 100, pad = 12;
  const max = Math.max(1, ...points.map((p) => p[1]));
  const n = Math.max(1, points.length - 1);
  const coords = points.map((p, i) => [pad + (i / n) * (w - 2 * pad), h - pad - (p[1] / max) * (h - 2 * pad)]);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coords.map((c) => c.map((x) => x.toFixed(1)).join(",")).join(" "));
  const dots = coords.map(([x, y]) => {
    const c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    c.setAttribute("cx", x.toFixed(1));
    c.setAttribute("cy", y.toFixed(1));
    c.setAttribute("r", "1.6");
    return c;
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", 9);
  label.textContent = "max " + (Number.isInteger(max) ? max : max.toFixed(2)) + (points.length ? "" : " (no data yet)");
  svg.replaceChildren(line, ...dots, label);
  svg.setAttribute("data-points", String(points.length));
}

async function refreshStats() {
  const stats = await api("GET", "/v1/stats");
  for (const f of ["available", "scheduled", "running", "retryable"]) $("total-" + f).textContent = stats.totals[f];
  $("total-dead-letters").textContent = stats.totals.dead_letters;
  fill("queues", stats.queues.map((q) => el("tr", { "data-queue": q.queue },
    el("td", {}, q.queue),
    el("td", { class: "num" }, q.available), el("td", { class: "num" }, q.scheduled),
    el("td", { class: "num" }, q.running), el("td", { class: "num" }, q.retryable),
    el("td", { class: "num" }, q.dead_letters),
    el("td", { class: "num" }, q.oldest_due_age_seconds === null ? "-" : q.oldest_due_age_seconds.toFixed(1) + " s"),
    el("td", { "data-testid": "queue-state-" + q.queue }, q.paused ? "paused" : "running"),
    el("td", {}, q.paused
      ? button("Resume", "resume-" + q.queue, () => api("POST", "/v1/queues/" + encodeURIComponent(q.queue) + "/resume"))
      : button("Pause", "pause-" + q.queue, () => api("POST", "/v1/queues/" + encodeURIComponent(q.queue) + "/pause"))))));
}

async function refreshHistory() {
  const history = await api("GET", "/v1/history?minutes=60");
  const minutes = new Map();
  for (const r of history.items) {
    const m = minutes.get(r.minute) || { done: 0, failed: 0, available: null };
    m.done += r.completed + r.retried + r.dead_lettered;
    m.failed += r.retried + r.dead_lettered;
    if (r.available !== null) m.available = (m.available || 0) + r.available;
    minutes.set(r.minute, m);
  }
  const rows = [...minutes.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  chart("chart-throughput", rows.map(([t, m]) => [t, m.done]));
  chart("chart-errors", rows.map(([t, m]) => [t, m.done ? m.failed / m.done : 0]));
  chart("chart-depth", rows.filter(([, m]) => m.available !== null).map(([t, m]) => [t, m.available]));
}

async function refreshIntegrations() {
  const list = await api("GET", "/v1/integrations");
  $("integrations-failing").textContent = list.summary.failing + " / " + list.summary.total;
  $("health-score").textContent = list.summary.average_score;
  fill("integrations", list.items.map((i) => el("tr", { "data-provider": i.provider },
    el("td", {}, i.provider),
    el("td", { class: "status-" + i.status, title: i.reasons.join("; ") }, i.status),
    el("td", { class: "num" }, i.score),
    el("td", { class: "num" }, i.error_rate === null ? "-" : (100 * i.error_rate).toFixed(1) + "%"),
    el("td", { class: "num" }, i.response_time_ms === null ? "-" : i.response_time_ms.toFixed(0) + " ms"),
    el("td", { class: "num" }, i.p95_latency_ms_24h === null ? "-" : i.p95_latency_ms_24h + " ms"),
    el("td", { class: "num" }, i.uptime_24h_percent + "%"),
    el("td", { class: "num" }, i.requests_24h.total + " (" + i.requests_24h.failed + " failed)"),
    el("td", {}, i.circuit),
    el("td", { class: "num" }, i.open_alerts))));
}

async function refreshAlerts() {
  const alerts = await api("GET", "/v1/alerts");
  $("open-alerts").textContent = alerts.items.length;
  fill("alerts", alerts.items.map((a) => el("tr", { "data-alert": a.id },
    el("td", {}, a.id), el("td", {}, when(a.at)),
    el("td", { class: "sev-" + a.severity }, a.severity), el("td", {}, a.kind), el("td", {}, a.message),
    el("td", {}, button("Acknowledge", "ack-" + a.id, () => api("POST", "/v1/alerts/" + a.id + "/acknowledge"))))));
}

async function refreshDeadLetters() {
  const letters = await api("GET", "/v1/dead-letters?limit=50");
  fill("dead-letters", letters.items.map((d) => el("tr", { "data-dead-letter": d.id },
    el("td", {}, d.id), el("td", {}, d.job_id), el("td", {}, d.kind), el("td", {}, d.queue),
    el("td", {}, d.reason), el("td", { class: "num" }, d.attempt + "/" + d.max_attempts),
    el("td", {}, when(d.dead_at)), el("td", { "data-testid": "replayed-as-" + d.id }, d.replayed_as === null ? "-" : d.replayed_as),
    el("td", {},
      button("Details", "dead-letter-detail-" + d.id, async () => detail("Dead letter " + d.id, await api("GET", "/v1/dead-letters/" + d.id))),
      d.replayed_as === null ? button("Replay", "replay-" + d.id, () => api("POST", "/v1/dead-letters/" + d.id + "/replay")) : ""))));
}

async function refreshJobs() {
  const id = $("job-id").value.trim();
  let items;
  if (id) {
    items = [await api("GET", "/v1/jobs/" + encodeURIComponent(id))];
  } else {
    const q = new URLSearchParams({ limit: "50" });
    for (const [k, input] of [["state", "job-state"], ["kind", "job-kind"], ["queue", "job-queue"]]) {
      if ($(input).value.trim()) q.set(k, $(input).value.trim());
    }
    items = (await api("GET", "/v1/jobs?" + q)).items;
  }
  fill("jobs", items.map((j) => el("tr", { "data-job": j.id },
    el("td", {}, j.id), el("td", {}, j.state), el("td", {}, j.kind), el("td", {}, j.queue),
    el("td", { class: "num" }, j.attempt + "/" + j.max_attempts), el("td", {}, when(j.run_at)),
    el("td", {},
      button("Details", "job-detail-" + j.id, async () => detail("Job " + j.id, await api("GET", "/v1/jobs/" + j.id))),
      ["completed", "cancelled", "scheduled", "retryable", "dead"].includes(j.state)
        ? button("Retry", "retry-" + j.id, () => api("POST", "/v1/jobs/" + j.id + "/retry")) : "",
      ["available", "scheduled", "running", "retryable"].includes(j.state)
        ? button("Cancel", "cancel-" + j.id, () => api("POST", "/v1/jobs/" + j.id + "/cancel")) : ""))));
}

async function refreshSchedules() {
  const list = await api("GET", "/v1/schedules");
  fill("schedules", list.items.map((s) => el("tr", { "data-schedule": s.name },
    el("td", {}, s.name), el("td", {}, s.cron + " " + s.timezone), el("td", {}, s.kind),
    el("td", {}, when(s.next_fire_at)), el("td", {}, when(s.last_fire_at)),
    el("td", { "data-testid": "schedule-state-" + s.name }, s.enabled ? "enabled" : "paused"),
    el("td", {}, s.enabled
      ? button("Pause", "pause-schedule-" + s.name, () => api("POST", "/v1/schedules/" + encodeURIComponent(s.name) + "/pause"))
      : button("Resume", "resume-schedule-" + s.name, () => api("POST", "/v1/schedules/" + encodeURIComponent(s.name) + "/resume"))))));
}

async function refresh() {
  const parts = [refreshStats, refreshHistory, refreshIntegrations, refreshAlerts, refreshDeadLetters, refreshJobs, refreshSchedules];
  const results = await Promise.allSettled(parts.map((p) => p()));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason); else $("error").textContent = "";
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.setAttribute("data-loaded", String(Number(document.body.getAttribute("data-loaded") || 0) + 1));
}

function signIn() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message) {
  sessionStorage.removeItem("penguin-jobs-admin-token");
  if (timer) clearInterval(timer);
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem("penguin-jobs-admin-token", $("token").value.trim());
    $("token").value = "";
    try {
      await api("GET", "/v1/stats");
      $("login-error").textContent = "";
      signIn();
    } catch (err) {
      if (err.message !== "unauthorized") signOut(err.message);
    }
  });
  $("logout").addEventListener("click", () => signOut(""));
  $("job-search").addEventListener("submit", (e) => { e.preventDefault(); refreshJobs().catch(showError); });
  $("purge-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const r = await api("DELETE", "/v1/dead-letters?older_than=" + encodeURIComponent($("purge-age").value.trim()));
      $("purge-result").textContent = r.deleted + " deleted";
      await refresh();
    } catch (err) { showError(err); }
  });
  if (token()) signIn();
});
