// The subjects list, live: each subject event updates its row in place; a new subject appears at the top
// (on the first page, when it matches the status filter).
"use strict";

(() => {
  const table = document.getElementById("subjects");
  if (!table) return;
  const body = table.tBodies[0];
  const filter = table.dataset.statusFilter;
  const firstPage = table.dataset.firstPage === "yes";

  function cell(className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    return td;
  }

  function newRow(subject) {
    const tr = document.createElement("tr");
    tr.dataset.id = subject.id;
    const name = cell("name");
    const link = document.createElement("a");
    link.href = `/subjects/${encodeURIComponent(subject.id)}`;
    link.textContent = subject.name;
    name.append(link);
    const stage = cell("stage");
    stage.dataset.field = "stage";
    const progress = cell("progress-cell");
    const status = document.createElement("span");
    status.className = "status";
    status.dataset.field = "status";
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.dataset.field = "bar";
    bar.setAttribute("aria-label", "Progress");
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.dataset.field = "pct";
    const eta = document.createElement("span");
    eta.className = "eta";
    eta.dataset.field = "eta";
    const line = document.createElement("div");
    line.className = "line";
    line.append(status, " ", bar, " ", pct, " ", eta);
    progress.append(line);
    const ageCell = cell("age");
    const time = document.createElement("time");
    time.dataset.field = "age";
    time.setAttribute("datetime", subject.created_at);
    time.textContent = ST.age(subject.created_at);
    ageCell.append(time);
    tr.append(name, stage, progress, ageCell);
    return tr;
  }

  ST.live({ last_event_id: document.body.dataset.lastEvent || "" }, (job) => {
    if (job.object !== "subject") return;
    let row = body.querySelector(`tr[data-id="${CSS.escape(job.id)}"]`);
    if (!row) {
      if (!firstPage || (filter && job.status !== filter)) return;
      row = newRow(job);
      body.prepend(row);
      document.getElementById("empty").hidden = true;
    }
    ST.updateJob(row, job);
  });
})();
