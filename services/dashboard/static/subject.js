// A subject's page, live: its progress and stage timeline from the event stream, the training curves
// (re-read every few seconds while it trains, drawn on canvases of fixed size), and the sections the server
// renders (report, evaluation, renders, error) swapped in place when their data changes.
"use strict";

(() => {
  const article = document.getElementById("subject");
  if (!article) return;
  const id = article.dataset.id;
  const COLOURS = { head: "#2563eb", lips: "#d97706", torso: "#059669" };
  let lastStatus = article.dataset.status;
  let stageStatus = {};
  let curvesAt = 0, curvesPending = null;

  function updateTimeline(subject) {
    for (const st of subject.stages || []) {
      const li = document.querySelector(`#timeline li[data-stage="${CSS.escape(st.name)}"]`);
      if (!li) continue;
      li.dataset.status = st.status;
      ST.setText(li, "status", st.status);
      ST.setText(li, "duration", ST.duration(ST.span(st.started_at, st.finished_at ||
        (st.status === "running" ? new Date().toISOString() : null))));
      ST.setText(li, "message", st.message || "");
    }
    const ready = document.querySelector('#timeline li[data-stage="ready"]');
    if (ready) {
      ready.dataset.status = subject.status === "succeeded" ? "succeeded" : "queued";
      ST.setText(ready, "status", subject.status === "succeeded" ? "ready to render" : "not yet");
    }
  }

  function draw(canvas, points, key) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, L = 48, R = 10, T = 10, B = 26;
    ctx.clearRect(0, 0, W, H);
    const values = points.map((p) => p[key]).filter((v) => v !== null && isFinite(v));
    if (!values.length) return;
    const total = Math.max(...points.map((p) => p.step), 1);
    let lo = Math.min(...values), hi = Math.max(...values);
    if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
    const x = (s) => L + (s / total) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    ctx.strokeStyle = "#d4d4d8"; ctx.fillStyle = "#3f3f46"; ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W - R, y(v)); ctx.stroke();
      ctx.fillText(key === "loss" ? v.toPrecision(2) : v.toFixed(1), 4, y(v) + 4);
    }
    ctx.fillText("0", L, H - 8);
    ctx.fillText(`step ${total}`, W - R - 60, H - 8);
    let prev = null;
    ctx.lineWidth = 2;
    for (const p of points) {
      if (p[key] === null || !isFinite(p[key])) { prev = null; continue; }
      if (prev && prev.stage === p.stage) {
        ctx.strokeStyle = COLOURS[p.stage] || "#7c3aed";
        ctx.beginPath(); ctx.moveTo(x(prev.step), y(prev[key])); ctx.lineTo(x(p.step), y(p[key])); ctx.stroke();
      } else {
        ctx.fillStyle = COLOURS[p.stage] || "#7c3aed";
        ctx.fillRect(x(p.step) - 1.5, y(p[key]) - 1.5, 3, 3);
      }
      prev = p;
    }
  }

  function showCurves(doc) {
    const points = doc.points || [];
    document.getElementById("curves-empty").hidden = points.length > 0;
    draw(document.getElementById("plot-loss"), points, "loss");
    draw(document.getElementById("plot-psnr"), points, "psnr");
    const phases = [];
    for (const p of points) {
      const last = phases[phases.length - 1];
      if (!last || last.stage !== p.stage) phases.push({ stage: p.stage, first: p.step, last: p.step, psnr: p.psnr });
      else { last.last = p.step; last.psnr = p.psnr; }
    }
    const legend = document.getElementById("legend");
    legend.replaceChildren(...phases.map((ph) => {
      const item = document.createElement("span");
      item.className = `key key-${ph.stage}`;
      item.textContent = `${ph.stage}: steps ${ph.first}–${ph.last}`;
      return item;
    }));
    const list = document.getElementById("substages");
    if (list) {
      list.replaceChildren(...phases.map((ph) => {
        const li = document.createElement("li");
        const done = ph.last >= doc.total_steps || phases[phases.length - 1] !== ph;
        li.textContent = `${ph.stage}: steps ${ph.first}–${ph.last}${ph.psnr !== null ? `, PSNR ${ph.psnr.toFixed(1)} dB` : ""}${done ? "" : " (training)"}`;
        return li;
      }));
    }
  }

  async function loadCurves() {
    curvesAt = Date.now();
    const r = await ST.api(`/v1/subjects/${encodeURIComponent(id)}/curves`);
    if (r.ok) showCurves(r.body);
  }

  function curvesSoon() {
    // at most one read every 3 s while events pour in
    if (curvesPending) return;
    const wait = Math.max(0, 3000 - (Date.now() - curvesAt));
    curvesPending = setTimeout(() => { curvesPending = null; loadCurves(); }, wait);
  }

  function onSubject(subject) {
    ST.updateJob(document.querySelector(".job-progress"), subject);
    updateTimeline(subject);
    const refresh = [];
    for (const st of subject.stages || []) {
      if (stageStatus[st.name] !== st.status && st.status === "succeeded" && st.name === "preprocess") refresh.push("report");
      stageStatus[st.name] = st.status;
    }
    if (subject.stage === "train" || subject.status === "succeeded") curvesSoon();
    if (subject.status !== lastStatus && ["succeeded", "failed", "canceled"].includes(subject.status)) {
      refresh.push("report", "metrics", "error-box", "renders");
      loadCurves();
    }
    lastStatus = subject.status;
    article.dataset.status = subject.status;
    if (refresh.length) ST.refreshSections([...new Set(refresh)]);
  }

  function onRender(render) {
    const row = document.querySelector(`#renders tr[data-id="${CSS.escape(render.id)}"]`);
    if (row) ST.updateJob(row, render);
    else ST.refreshSections(["renders"]);
  }

  for (const li of document.querySelectorAll("#timeline li[data-stage]")) stageStatus[li.dataset.stage] = li.dataset.status;
  loadCurves();
  ST.live({ subject_id: id, last_event_id: document.body.dataset.lastEvent || "" }, (job) => {
    if (job.object === "subject" && job.id === id) onSubject(job);
    else if (job.object === "render") onRender(job);
  });
})();
