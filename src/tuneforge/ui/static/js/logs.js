// Logs: chat completions stored with `store: true` (GET /v1/chat/completions), newest first,
// filtered by model and metadata; each with its prompt (GET …/{id}/messages) and answer. The
// ticked ones become a training file (POST /v1/files, purpose fine-tune): each log's messages
// and its (first) answer as one OpenAI chat example (developer → system, as the chat route reads
// it; the request's tools kept), leaving out answers that are empty or were cut at the token
// limit (a training file must not teach either); or they are deleted.
import { $, api, el, fmt, link, notice, replace, ROOT, showError, table, when } from "./lib.js";

const PAGE = 20;
const chosen = new Map();  // id → {completion, messages}
let shown = [];  // [{completion, messages}] in the table
let last = null;  // the cursor of the next page
let query = null;  // the filter of the logs shown (set by Filter; "Show older" keeps it)

function filters() {
  const query = new URLSearchParams({ order: "desc", limit: String(PAGE) });
  if ($("#model").value) query.set("model", $("#model").value);
  for (const pair of $("#metadata").value.split(",")) {
    if (!pair.trim()) continue;
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`Metadata filter "${pair.trim()}": write key=value`);
    query.set(`metadata[${pair.slice(0, at).trim()}]`, pair.slice(at + 1).trim());
  }
  return query;
}

function said(messages) {
  const user = messages.filter((m) => m.role === "user");
  return user.length ? user[user.length - 1].content || "" : "";
}

// Why a log's answer does not make a training example, or null.
function unfit(completion) {
  const choice = completion.choices[0];
  if (choice.finish_reason === "length") return "cut at the token limit";
  if (!choice.message.content && !(choice.message.tool_calls || []).length) return "empty";
  return null;
}

function answer(completion) {
  const message = completion.choices[0].message;
  const calls = (message.tool_calls || []).map((c) => `${c.function.name}(${c.function.arguments})`);
  return [message.content || "", ...calls].filter(Boolean).join("\n");
}

function conversation(log) {
  return el("details", {},
    el("summary", {}, "Conversation"),
    el("dl", { class: "turns" }, log.messages.flatMap((m) => [el("dt", {}, m.role), el("dd", {}, m.content || "")]),
      el("dt", {}, "assistant"), el("dd", {}, answer(log.completion))));
}

function updateChosen() {
  const n = chosen.size;
  $("#chosen").textContent = n ? `${n} selected.` : "None selected: tick the logs to keep.";
  $("#save-btn").disabled = !n;
  $("#delete-btn").disabled = !n;
}

function render() {
  replace("#logs", shown.length ? table([
    { label: "Keep", value: (log) => el("input", {
      type: "checkbox", checked: chosen.has(log.completion.id), "aria-label": `Select ${log.completion.id}`,
      onchange: (e) => { if (e.target.checked) chosen.set(log.completion.id, log); else chosen.delete(log.completion.id); updateChosen(); },
    }) },
    { label: "Created", value: (log) => when(log.completion.created) },
    { label: "Model", value: (log) => el("code", {}, log.completion.model) },
    { label: "Metadata", value: (log) => Object.entries(log.completion.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–" },
    { label: "Prompt", value: (log) => el("div", {}, said(log.messages), conversation(log)) },
    { label: "Answer", value: (log) => el("div", {}, answer(log.completion),
      unfit(log.completion) ? el("div", { class: "muted" }, `(${unfit(log.completion)}: not saved as an example)`) : null) },
    { label: "Tokens", num: true, value: (log) => fmt(log.completion.usage.total_tokens) },
  ], shown) : el("p", { class: "muted" }, "No stored completions match: send chat completions with store: true (and metadata to filter by)."));
}

// Every message of a log's request (pages of 100, following the cursor).
async function messagesOf(id) {
  const messages = [];
  let after = null;
  while (true) {
    const query = new URLSearchParams({ limit: "100" });
    if (after) query.set("after", after);
    const page = await api(`/v1/chat/completions/${id}/messages?${query}`);
    messages.push(...page.data);
    if (!page.has_more) return messages;
    after = page.last_id;
  }
}

// mode "new": the filter as typed now (the selection starts again); "more": the next page of
// the logs shown; "again": their first page again (after a delete), the selection kept.
async function load(mode = "new") {
  $("#form-error").hidden = true;
  if (mode === "new" || query === null) {
    query = filters();
    chosen.clear();
    updateChosen();
  }
  // the Evals form, filled with this metadata filter
  const grade = new URLSearchParams({ kind: "stored_completions", filter: $("#metadata").value.trim() });
  $("#grade").href = `${ROOT}/evals?${grade}`;
  const more = mode === "more";
  const pageQuery = new URLSearchParams(query);
  if (more && last) pageQuery.set("after", last);
  const page = await api(`/v1/chat/completions?${pageQuery}`);
  const logs = await Promise.all(page.data.map(async (completion) => ({
    completion, messages: await messagesOf(completion.id),
  })));
  shown = more ? shown.concat(logs) : logs;
  last = page.last_id;
  $("#more").hidden = !page.has_more;
  $("#select-all").hidden = !shown.length;
  render();
}

function trainingExample(log) {
  const messages = log.messages.map((m) => {
    const out = { role: m.role === "developer" ? "system" : m.role, content: m.content };
    for (const key of ["name", "tool_calls", "tool_call_id"]) if (m[key]) out[key] = m[key];
    return out;
  });
  const message = log.completion.choices[0].message;
  const reply = { role: "assistant", content: message.content };
  if (message.tool_calls) reply.tool_calls = message.tool_calls;
  const example = { messages: [...messages, reply] };
  if (log.completion.tools) example.tools = log.completion.tools;
  return example;
}

$("#save-btn").addEventListener("click", async () => {
  $("#form-error").hidden = true;
  const fit = [...chosen.values()].filter((log) => !unfit(log.completion));
  const left = chosen.size - fit.length;
  const why = left ? ` (${left} left out: an empty answer, or one cut at the token limit)` : "";
  if (!fit.length) {
    showError("#form-error", new Error(`None of the selected logs makes a training example${why}.`));
    return;
  }
  const lines = fit.map((log) => `${JSON.stringify(trainingExample(log))}\n`);
  const name = $("#filename").value.trim() || "from-logs.jsonl";
  const form = new FormData();
  form.append("file", new Blob(lines, { type: "application/jsonl" }), name.endsWith(".jsonl") ? name : `${name}.jsonl`);
  form.append("purpose", "fine-tune");
  $("#save-btn").disabled = true;
  try {
    const file = await api("/v1/files", { method: "POST", form });
    replace("#saved", el("p", {}, `Saved ${lines.length} examples${why} as `, link(`${ROOT}/data/${file.id}`, file.filename),
      " (", el("code", {}, file.id), "): check it there, or ", link(`${ROOT}/jobs/new?training_file=${file.id}`, "start a fine-tuning job on it"), "."));
    notice(`Saved ${file.filename}.`);
  } catch (err) {
    showError("#form-error", err);
  } finally {
    $("#save-btn").disabled = !chosen.size;
  }
});

$("#delete-btn").addEventListener("click", async () => {
  const ids = [...chosen.keys()];
  if (!window.confirm(`Delete ${ids.length} stored completion(s)? This cannot be undone.`)) return;
  $("#delete-btn").disabled = true;
  let deleted = 0, failure = null;
  try {
    for (const id of ids) {
      await api(`/v1/chat/completions/${id}`, { method: "DELETE" });
      chosen.delete(id);
      deleted += 1;
    }
    notice(`Deleted ${deleted}.`);
  } catch (err) {
    failure = new Error(`Deleted ${deleted} of ${ids.length}: ${err.message}`);
  }
  updateChosen();
  await load("again").catch((err) => { failure = failure || err; });
  if (failure) showError("#form-error", failure);
});

$("#filter-form").addEventListener("submit", (e) => {
  e.preventDefault();
  load().catch((err) => showError("#form-error", err));
});
$("#select-all").addEventListener("click", () => {
  for (const log of shown) chosen.set(log.completion.id, log);
  updateChosen();
  render();
});
$("#more").addEventListener("click", () => load("more").catch((err) => showError("#form-error", err)));

async function main() {
  const models = (await api("/v1/models")).data;
  $("#model").append(...models.map((m) => el("option", { value: m.id }, m.id)));
  const query = new URLSearchParams(location.search);  // ?metadata=key=value,… from a link
  if (query.get("metadata")) $("#metadata").value = query.get("metadata");
  await load();
}

main().catch((err) => showError("#form-error", err));
