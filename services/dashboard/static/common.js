// Shared by every dashboard page: calls to the v1 routes under /dashboard/api (the session cookie signs
// them; the CSRF token from the page goes with every change), live events, and the small updates that keep
// a job's status, progress bar and ETA current without moving anything on the page.
"use strict";

const ST = (() => {
  const API = "/dashboard/api";
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // fetch a v1 route; resolves to {ok, status, body}; a problem's detail is the sentence shown to people
  async function api(path, options = {}) {
    const method = (options.method || "GET").toUpperCase();
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    let body = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(API + path, { method, headers, body, credentials: "same-origin" });
    } catch (err) {
      return { ok: false, status: 0, body: { detail: "The server could not be reached; check your connection and retry." } };
    }
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    }
    let parsed = null;
    try { parsed = await response.json(); } catch (err) { parsed = null; }
    return { ok: response.ok, status: response.status, body: parsed || {} };
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
    if (m) return `${m} min ${String(r).padStart(2, "0")} s`;
    return `${r} s`;
  }

  function age(stamp) {
    if (!stamp) return "";
    const seconds = (Date.now() - Date.parse(stamp)) / 1000;
    for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "min"]]) {
      if (seconds >= size) return `${Math.floor(seconds / size)} ${unit} ago`;
    }
    return "just now";
  }

  function span(start, end) {
    return start && end ? (Date.parse(end) - Date.parse(start)) / 1000 : null;
  }

  function setText(root, field, text) {
    const el = root.querySelector(`[data-field="${field}"]`);
    if (el && el.textContent !== text) el.textContent = text;
    return el;
  }

  // status, progress bar, percent and ETA of one job, in the fixed-size boxes the server drew
  function updateJob(root, job) {
    if (!root) return;
    const status = setText(root, "status", job.status);
    if (status) status.dataset.status = job.status;
    const bar = root.querySelector('[data-field="bar"]');
    if (bar) bar.value = job.progress;
    setText(root, "pct", `${Math.round(job.progress * 100)}%`);
    setText(root, "eta", job.status === "running" && job.eta_s !== null ? `${duration(job.eta_s)} left` : "");
    if (job.stage !== undefined) setText(root, "stage", job.stage || "queued");
    if (job.message !== undefined) setText(root, "message", job.message || "");
  }

  // one EventSource on the tenant's job events (the cookie authenticates it); onJob(resource)
  function live(params, onJob) {
    const indicator = document.getElementById("live");
    const query = new URLSearchParams(params).toString();
    const source = new EventSource(`${API}/v1/events${query ? "?" + query : ""}`);
    const say = (text) => { if (indicator) indicator.textContent = text; };
    source.onopen = () => say("live");
    source.onerror = async () => {
      say("reconnecting…");
      const check = await api("/v1/subjects?limit=1");  // a 401 sends the browser to /login
      if (check.status === 401) source.close();
    };
    source.addEventListener("job", (event) => {
      say("live");
      try { onJob(JSON.parse(event.data)); } catch (err) { console.error(err); }
    });
    return source;
  }

  // re-read this page and swap the named sections in place (the server renders them; nothing is duplicated)
  async function refreshSections(ids) {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ids) {
      const fresh = doc.getElementById(id), current = document.getElementById(id);
      if (!fresh || !current) continue;
      current.replaceWith(document.importNode(fresh, true));
    }
  }

  function tickAges() {
    for (const el of document.querySelectorAll('time[data-field="age"]')) {
      el.textContent = age(el.getAttribute("datetime"));
    }
  }
  setInterval(tickAges, 30000);

  return { api, duration, age, span, updateJob, live, refreshSections, setText };
})();
