// Batches: the batches on this server (GET /v1/batches), live while any runs, with their files
// to download and a cancel; and a form that uploads a requests file (purpose batch) and starts
// a batch on it (POST /v1/batches).
import { $, api, badge, download, el, fmt, notice, replace, showError, table, when } from "./lib.js";

const LIVE = ["validating", "in_progress", "finalizing", "cancelling"];
let timer = null;

function counts(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const done = c.completed + c.failed;
  return el("span", {},
    el("progress", { max: c.total || 1, value: done, "aria-label": `${done} of ${c.total} requests answered` }),
    ` ${fmt(c.completed)} answered, ${fmt(c.failed)} failed, of ${fmt(c.total)}`);
}

function status(b) {
  const errors = (b.errors && b.errors.data) || [];
  if (!errors.length) return badge(b.status);
  return el("div", {}, badge(b.status),
    el("ul", { class: "problems" }, errors.map((e) => el("li", { class: "bad" }, e.message))));
}

function files(b) {
  const buttons = [];
  if (b.output_file_id) {
    buttons.push(el("button", { type: "button", onclick: () => download(`/v1/files/${b.output_file_id}/content`, `${b.id}_output.jsonl`).catch((err) => notice(err.message)) }, "Answers"));
  }
  if (b.error_file_id) {
    buttons.push(el("button", { type: "button", class: "secondary", onclick: () => download(`/v1/files/${b.error_file_id}/content`, `${b.id}_error.jsonl`).catch((err) => notice(err.message)) }, "Errors"));
  }
  if (b.status === "in_progress") {
    buttons.push(el("button", { type: "button", class: "danger", "aria-label": `Cancel ${b.id}`, onclick: async () => {
      try { await api(`/v1/batches/${b.id}/cancel`, { method: "POST" }); notice(`Cancelling ${b.id}…`); refresh(); }
      catch (err) { notice(err.message); }
    } }, "Cancel"));
  }
  return buttons.length ? el("div", { class: "row" }, buttons) : "–";
}

async function refresh() {
  clearTimeout(timer);
  const batches = (await api("/v1/batches?limit=100")).data;
  replace("#batches", batches.length ? table([
    { label: "Batch", value: (b) => el("code", { class: "id" }, b.id) },
    { label: "Status", value: status },
    { label: "Model", value: (b) => b.model || "–" },
    { label: "Endpoint", value: (b) => el("code", {}, b.endpoint) },
    { label: "Requests", value: counts },
    { label: "Tokens in / out", value: (b) => (b.usage ? `${fmt(b.usage.input_tokens)} / ${fmt(b.usage.output_tokens)}` : "–") },
    { label: "Created", value: (b) => when(b.created_at) },
    { label: "Files", value: files },
  ], batches) : el("p", { class: "muted" }, "None yet: start one below."));
  if (batches.some((b) => LIVE.includes(b.status))) timer = setTimeout(() => refresh().catch(() => {}), 1500);
}

$("#batch-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#form-error").hidden = true;
  const chosen = $("#batch-file").files[0];
  if (!chosen) {
    showError("#form-error", new Error("Choose a .jsonl file of requests first."));
    $("#batch-file").focus();
    return;
  }
  const form = new FormData();
  form.append("file", chosen, chosen.name);
  form.append("purpose", "batch");
  $("#create-btn").disabled = true;
  try {
    notice(`Uploading and checking ${chosen.name}…`);
    const file = await api("/v1/files", { method: "POST", form });
    const batch = await api("/v1/batches", { method: "POST", json: {
      input_file_id: file.id, endpoint: $("#endpoint").value, completion_window: "24h",
    } });
    notice(batch.status === "failed" ? `${batch.id} failed: see its errors.` : `Started ${batch.id}.`);
    $("#batch-form").reset();
    await refresh();
  } catch (err) {
    notice("");
    showError("#form-error", err);
  } finally {
    $("#create-btn").disabled = false;
  }
});

refresh().catch((err) => showError("#form-error", err));
