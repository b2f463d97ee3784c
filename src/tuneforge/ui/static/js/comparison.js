// One comparison: progress while it runs, then the report (the same report.html the CLI writes).
import { $, api, badge, el, pageData, replace, showError, when } from "./lib.js";

const id = pageData("comparison");

async function showReport() {
  const response = await api(`/v1/tuneforge/comparisons/${id}/report`, { raw: true });
  const frame = $("#report");
  // srcdoc keeps the API key out of any URL; the sandbox runs no scripts (the report has none).
  frame.addEventListener("load", () => {
    const doc = frame.contentDocument;  // same origin (allow-same-origin), still no scripts
    if (doc && doc.documentElement) frame.style.height = `${doc.documentElement.scrollHeight + 24}px`;
  }, { once: true });
  frame.srcdoc = await response.text();
  $("#result-section").hidden = false;
}

async function poll() {
  const c = await api(`/v1/tuneforge/comparisons/${id}`);
  const p = c.progress;
  replace("#state", el("dl", { class: "summary" },
    el("dt", {}, "Status"), el("dd", { id: "cmp-status" }, badge(c.status)),
    el("dt", {}, "Test file"), el("dd", {}, c.request.test_filename || c.request.test_file),
    el("dt", {}, "Training file"), el("dd", {}, c.request.training_filename || c.request.training_file),
    el("dt", {}, "Fine-tuned models"), el("dd", {}, (c.request.models || []).join(", ") || "none"),
    c.request.grader ? [el("dt", {}, "Grader"), el("dd", {}, `grader:${c.request.grader.name} (${c.request.grader.type})`)] : null,
    el("dt", {}, "Created"), el("dd", {}, when(c.created_at)),
    p ? [el("dt", {}, "Now"), el("dd", {}, `${p.approach}: ${p.done} of ${p.total} requests`)] : null,
    c.message ? [el("dt", {}, "Last step"), el("dd", {}, c.message)] : null,
    c.warning ? [el("dt", {}, "Note"), el("dd", {}, c.warning)] : null));
  const bar = $("#progress");
  bar.hidden = !p;
  if (p) bar.value = p.total ? p.done / p.total : 0;
  if (c.status === "failed") { showError("#cmp-error", { message: c.error }); return; }
  if (c.status === "succeeded") { await showReport(); return; }
  setTimeout(() => poll().catch((err) => showError("#cmp-error", err)), 1000);
}

poll().catch((err) => showError("#cmp-error", err));
