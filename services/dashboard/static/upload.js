// Uploads through the v1 contract: POST /v1/uploads for a presigned URL, PUT the file there (with a progress
// bar), then create the subject or the render from the upload id. Files are checked here first (type and
// size) so a wrong file is refused before a byte is sent; the API's refusals are shown in its own words.
"use strict";

(() => {
  const EXTENSIONS = {
    video: [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".flv", ".wmv"],
    audio: [".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".wma",
            ".mp4", ".mov", ".mkv", ".webm", ".m4v"],  // a video's sound can be the speech
  };

  function check(file, kind, maxBytes) {
    const name = file.name.toLowerCase();
    const type = (file.type || "").toLowerCase();
    const byType = kind === "video" ? type.startsWith("video/") : type.startsWith("audio/") || type.startsWith("video/");
    const byName = EXTENSIONS[kind].some((ext) => name.endsWith(ext));
    if (!byType && !byName) {
      return kind === "video"
        ? `${file.name} is not a video file: pick an MP4, MOV, MKV or WebM of the person talking.`
        : `${file.name} is not an audio file: pick a WAV, MP3, M4A, FLAC or OGG (or a video with sound).`;
    }
    if (file.size === 0) return `${file.name} is empty.`;
    if (maxBytes && file.size > maxBytes) {
      return `${file.name} is ${(file.size / 1e9).toFixed(2)} GB; the limit is ${(maxBytes / 1e9).toFixed(1)} GB.`;
    }
    return null;
  }

  function put(url, headers, file, onProgress) {
    // XMLHttpRequest, not fetch: it reports upload progress
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      for (const [k, v] of Object.entries(headers || {})) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let detail = "";
        try { detail = JSON.parse(xhr.responseText).detail || ""; } catch (err) { detail = ""; }
        resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, detail });
      };
      xhr.onerror = () => resolve({ ok: false, status: 0, detail: "The upload was interrupted; check your connection and retry." });
      xhr.send(file);
    });
  }

  function row(list, file) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "file";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `Upload of ${file.name}`);
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = "waiting";
    li.append(name, " ", bar, " ", note);
    list.append(li);
    return {
      progress: (f) => { bar.value = f; note.textContent = `${Math.round(f * 100)}% sent`; },
      say: (text, failed = false) => {
        note.textContent = text;
        if (failed) { li.classList.add("failed"); note.setAttribute("role", "alert"); }
      },
      link: (href, text) => {
        note.textContent = "";
        const a = document.createElement("a");
        a.href = href;
        a.textContent = text;
        note.append(a);
      },
    };
  }

  async function send(file, ui, create) {
    const contentType = file.type || "application/octet-stream";
    const made = await ST.api("/v1/uploads", {
      method: "POST", json: { filename: file.name, content_type: contentType, bytes: file.size },
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    if (!made.ok) return ui.say(made.body.detail || `Refused (${made.status}).`, true);
    const sent = await put(made.body.url, made.body.headers, file, ui.progress);
    if (!sent.ok) return ui.say(sent.detail || `The upload failed (${sent.status}); retry.`, true);
    ui.say("checking the file…");
    const job = await create(made.body.id);
    if (!job.ok) return ui.say(job.body.detail || `Refused (${job.status}).`, true);
    return job.body;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.dataset.kind) return;
    event.preventDefault();
    const kind = form.dataset.kind;
    const input = form.querySelector('input[type="file"]');
    const list = form.querySelector("ul.uploads");
    const button = form.querySelector('button[type="submit"]');
    const maxBytes = Number(document.body.dataset.maxBytes || 0);
    const files = Array.from(input.files || []);
    list.replaceChildren();
    if (!files.length) {
      const li = document.createElement("li");
      li.className = "failed";
      li.setAttribute("role", "alert");
      li.textContent = kind === "video" ? "Choose a video first." : "Choose one or more speech files first.";
      list.append(li);
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      const jobs = files.map((file) => ({ file, ui: row(list, file), problem: check(file, kind, maxBytes) }));
      for (const job of jobs) if (job.problem) job.ui.say(job.problem, true);
      for (const { file, ui, problem } of jobs) {
        if (problem) continue;
        if (kind === "video") {
          const name = form.querySelector('input[name="name"]').value.trim();
          const subject = await send(file, ui, (id) => ST.api("/v1/subjects", {
            method: "POST", json: name ? { upload_id: id, name } : { upload_id: id },
            headers: { "Idempotency-Key": crypto.randomUUID() },
          }));
          if (subject) { ui.say("received: opening its page…"); window.location.assign(`/subjects/${encodeURIComponent(subject.id)}`); }
        } else {
          const mode = form.querySelector('select[name="mode"]').value;
          const render = await send(file, ui, (id) => ST.api(`/v1/subjects/${encodeURIComponent(form.dataset.subject)}/renders`, {
            method: "POST", json: { upload_id: id, mode, ref: file.name.slice(0, 200) },
            headers: { "Idempotency-Key": crypto.randomUUID() },
          }));
          if (render) ui.link(`/renders/${encodeURIComponent(render.id)}`, `render ${render.status}: open`);
        }
      }
      if (kind === "audio") await ST.refreshSections(["renders"]);
    } finally {
      button.disabled = false;
    }
  });
})();
