// One eval: its criteria, its runs (refreshed while one is live) and a form to start a run
// (rows from a file of purpose "evals", answered by a model or graded as they are).
import { $, api, badge, el, fmt, notice, pageData, replace, ROOT, showError, table, when } from "./lib.js";

const id = pageData("eval");
const LIVE = ["queued", "in_progress"];
let timer = null;
let names = new Map();  // criterion id → name
let stored = false;  // an eval of stored chat completions (the Logs page's), not of rows given

function rate(counts) {
  const graded = counts.total;
  return graded ? `${Math.round((100 * counts.passed) / graded)} %` : "–";
}

async function showRuns() {
  const runs = await api(`/v1/evals/${id}/runs?limit=100&order=desc`);
  replace("#runs", runs.data.length ? table([
    { label: "Run", value: (r) => el("a", { href: `${ROOT}/evals/${id}/runs/${r.id}` }, r.name) },
    { label: "Model", value: (r) => (r.model ? el("code", {}, r.model) : "answers in the rows") },
    { label: "Status", value: (r) => badge(r.status) },
    { label: "Passed", num: true, value: (r) => r.result_counts.passed },
    { label: "Failed", num: true, value: (r) => r.result_counts.failed },
    { label: "Errored", num: true, value: (r) => r.result_counts.errored },
    { label: "Pass rate", num: true, value: (r) => rate(r.result_counts) },
    { label: "By criterion", value: (r) => r.per_testing_criteria_results.map((c) => `${names.get(c.testing_criteria) || c.testing_criteria}: ${c.passed}/${c.passed + c.failed}`).join(", ") },
    { label: "Created", value: (r) => when(r.created_at) },
    { label: "", value: (r) => (LIVE.includes(r.status) ? el("button", { type: "button", class: "danger", "aria-label": `Cancel ${r.name}`,
      onclick: async () => {
        try { await api(`/v1/evals/${id}/runs/${r.id}`, { method: "POST" }); notice(`Cancelled ${r.name}.`); showRuns(); }
        catch (err) { notice(err.message); }
      } }, "Cancel") : "") },
  ], runs.data) : el("p", { class: "muted" }, "No runs yet: start one below."));
  clearTimeout(timer);
  if (runs.data.some((r) => LIVE.includes(r.status))) timer = setTimeout(() => showRuns().catch(() => {}), 1500);
}

async function main() {
  const [ev, files, models] = await Promise.all([
    api(`/v1/evals/${id}`), api("/v1/files?purpose=evals"), api("/v1/models"),
  ]);
  names = new Map(ev.testing_criteria.map((c) => [c.id, c.name]));
  document.title = `${ev.name} · tuneforge Studio`;
  $("h1").textContent = `Eval: ${ev.name}`;
  const fields = Object.keys(ev.data_source_config.schema.properties.item.properties || {});
  replace("#summary", el("dl", { class: "summary" },
    el("dt", {}, "Id"), el("dd", {}, el("code", {}, ev.id)),
    el("dt", {}, "Row fields"), el("dd", {}, fields.join(", ") || "any"),
    el("dt", {}, "Criteria"), el("dd", {}, el("ul", {}, ev.testing_criteria.map((c) =>
      el("li", {}, el("strong", {}, c.name), ` (${c.type}${c.pass_threshold !== undefined ? `, passes at ${fmt(c.pass_threshold)}` : ""})`)))),
    el("dt", {}, "Created"), el("dd", {}, when(ev.created_at))));
  stored = ev.data_source_config.type !== "custom";
  for (const field of ["#upload", "#system", "#user"]) $(field).closest(".field").hidden = stored;
  const filter = Object.entries(ev.data_source_config.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  if (stored) {
    replace("#rows", el("option", { value: "" }, `stored chat completions${filter ? ` with ${filter}` : ""}`));
  } else {
    replace("#rows", files.data.length
      ? files.data.map((f) => el("option", { value: f.id }, `${f.filename} (${f.id})`))
      : el("option", { value: "" }, "none uploaded yet: choose a file"));
  }
  replace("#model", el("option", { value: "" }, stored ? "none: grade the stored answers" : "none: grade the answers in the rows (sample)"),
    models.data.map((m, i) => el("option", { value: m.id, selected: !stored && i === 0 }, m.id)));
  await showRuns();
}

$("#run-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#form-error").hidden = true;
  const button = e.submitter || $("#run-form button");
  button.disabled = true;
  try {
    let fileId = $("#rows").value;
    const chosen = $("#upload").files[0];
    if (chosen) {
      const form = new FormData();
      form.append("file", chosen);
      form.append("purpose", "evals");
      fileId = (await api("/v1/files", { method: "POST", form })).id;
    }
    const model = $("#model").value;
    const sampling = { temperature: Number($("#temperature").value), max_completion_tokens: Number($("#max_tokens").value) };
    const source = stored ? { type: "stored_completions" } : { type: "file_id", id: fileId };
    let dataSource = { type: stored ? "completions" : "jsonl", source };
    if (stored && model) {
      // the model answers each stored prompt anew: the log's own messages
      dataSource = { type: "completions", model, source,
        input_messages: { type: "item_reference", item_reference: "item.input" }, sampling_params: sampling };
    } else if (model) {
      const template = [];
      if ($("#system").value.trim()) template.push({ role: "system", content: $("#system").value });
      template.push({ role: "user", content: $("#user").value });
      dataSource = {
        type: "completions", model, source,
        input_messages: { type: "template", template },
        sampling_params: sampling,
      };
    }
    const name = $("#run-name").value.trim() || undefined;
    const run = await api(`/v1/evals/${id}/runs`, { method: "POST", json: { name, data_source: dataSource } });
    notice(`Started ${run.name}.`);
    $("#upload").value = "";
    await main();
    $("#model").value = model;  // the next run starts from the same choice
  } catch (err) {
    showError("#form-error", err);
  } finally {
    button.disabled = false;
  }
});

main().catch((err) => showError("#form-error", err));
