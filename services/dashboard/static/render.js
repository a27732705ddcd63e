// A render's page, live: progress from the event stream; when it finishes, the page's sections are re-read
// in place (video, QC, buttons). Cancel and retry go through the v1 routes with the page's CSRF token.
"use strict";

(() => {
  const article = document.getElementById("render");
  if (!article) return;
  const id = article.dataset.id;
  const FINAL = ["succeeded", "failed", "canceled"];

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("#cancel, #retry");
    if (!button) return;
    const result = document.getElementById("action-result");
    button.disabled = true;
    const action = button.id;
    const r = await ST.api(`/v1/renders/${encodeURIComponent(id)}/${action}`, {
      method: "POST", headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    button.disabled = false;
    if (!r.ok) { result.textContent = r.body.detail || `Refused (${r.status}).`; return; }
    if (action === "retry") window.location.assign(`/renders/${encodeURIComponent(r.body.id)}`);
    else result.textContent = "Cancel requested.";
  });

  ST.live({ render_id: id, last_event_id: document.body.dataset.lastEvent || "" }, (render) => {
    if (render.id !== id) return;
    ST.updateJob(document.querySelector(".job-progress"), render);
    const was = article.dataset.status;
    if (render.status !== was && FINAL.includes(render.status)) {
      ST.refreshSections(["render"]).then(() => {
        const fresh = document.getElementById("render");
        if (fresh) fresh.dataset.status = render.status;
        const indicator = document.getElementById("live");  // the re-read section starts at "connecting…"
        if (indicator) indicator.textContent = "live";
      });
    }
    article.dataset.status = render.status;
  });
})();
