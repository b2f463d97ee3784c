// One eval run: its counts (live while it runs) and every row with its answer and each
// criterion's score, filterable by pass/fail (GET …/output_items?status=).
import { $, api, badge, el, fmt, pageData, replace, showError, table, when } from "./lib.js";

const evalId = pageData("eval");
const runId = pageData("run");
const LIVE = ["queued", "in_progress"];
let names = new Map();  // criterion id ("<name>-<uuid>", what results are named by) → its name

function nameOf(id) { return names.get(id) || id; }

async function allItems(status) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: "100" });
    if (status) query.set("status", status);
    if (after) query.set("after", after);
    const page = await api(`/v1/evals/${evalId}/runs/${runId}/output_items?${query}`);
    items.push(...page.data);
    if (!page.has_more) return items;
    after = page.last_id;
  }
}

function lastUser(sample, item) {
  const turns = (sample.input || []).filter((m) => m.role === "user");
  return turns.length ? turns[turns.length - 1].content : JSON.stringify(item);
}

// Long text scrolls inside its cell; focusable, so that keyboard users can scroll it too.
function text(value) { return el("span", { class: "cell-text", tabindex: "0" }, value); }

function resultCell(result) {
  if (!result) return "–";
  const mark = result.passed ? "✓ pass" : "✗ fail";
  const error = result.sample && result.sample.error;
  return el("span", { class: result.passed ? "ok" : "bad", title: error || null },
    `${mark} (${fmt(result.score, 3)})`, error ? el("small", { class: "muted" }, ` ${error}`) : null);
}

async function showItems(run) {
  const show = document.querySelector("#filter input:checked").value;
  const items = await allItems(show);
  const ids = run.per_testing_criteria_results.map((c) => c.testing_criteria);
  replace("#items", items.length ? table([
    { label: "Row", num: true, value: (i) => i.datasource_item_id + 1 },
    { label: "Status", value: (i) => badge(i.status) },
    { label: "Prompt", value: (i) => text(lastUser(i.sample, i.datasource_item)) },
    { label: "Answer", value: (i) => (i.sample.error
      ? el("span", { class: "bad" }, i.sample.error.message)
      : text((i.sample.output[0] || {}).content ?? "–")) },
    ...ids.map((cid) => ({ label: nameOf(cid), value: (i) => resultCell(i.results.find((r) => r.name === cid)) })),
  ], items) : el("p", { class: "muted" }, LIVE.includes(run.status) ? "No rows graded yet." : "No rows to show."));
}

async function poll() {
  const run = await api(`/v1/evals/${evalId}/runs/${runId}`);
  const counts = run.result_counts;
  $("h1").textContent = `Run: ${run.name}`;
  replace("#summary", el("dl", { class: "summary" },
    el("dt", {}, "Status"), el("dd", { id: "run-status" }, badge(run.status)),
    el("dt", {}, "Model"), el("dd", {}, run.model ? el("code", {}, run.model) : "answers in the rows"),
    el("dt", {}, "Rows graded"), el("dd", { id: "run-counts" },
      `${counts.total}: ${counts.passed} passed, ${counts.failed} failed, ${counts.errored} errored`),
    el("dt", {}, "By criterion"), el("dd", {}, run.per_testing_criteria_results
      .map((c) => `${nameOf(c.testing_criteria)}: ${c.passed} of ${c.passed + c.failed} passed`).join("; ")),
    run.per_model_usage.length ? [el("dt", {}, "Tokens"), el("dd", {},
      `${run.per_model_usage[0].prompt_tokens} in, ${run.per_model_usage[0].completion_tokens} out`)] : null,
    run.error ? [el("dt", {}, "Error"), el("dd", { class: "bad" }, run.error.message)] : null,
    el("dt", {}, "Created"), el("dd", {}, when(run.created_at))));
  await showItems(run);
  if (LIVE.includes(run.status)) setTimeout(() => poll().catch((err) => showError("#items", err)), 1500);
  return run;
}

document.querySelectorAll("#filter input").forEach((input) => input.addEventListener("change", () => {
  api(`/v1/evals/${evalId}/runs/${runId}`).then(showItems).catch((err) => showError("#items", err));
}));

api(`/v1/evals/${evalId}`)
  .then((ev) => { names = new Map(ev.testing_criteria.map((c) => [c.id, c.name])); return poll(); })
  .catch((err) => showError("#items", err));
