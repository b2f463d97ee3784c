// Playground: chat with one to three served models side by side, streamed from
// POST /v1/chat/completions (stream: true). Each pane keeps its own conversation; the system
// prompt and sampling settings are shown and sent with every request. Panes that answered the
// same messages can be judged: "Prefer this answer" makes a preference pair with each other
// pane's answer (OpenAI's DPO row: input, preferred_output, non_preferred_output), and the pairs
// are uploaded as a training file (POST /v1/files) for a DPO job.
import { $, api, el, link, notice, params, replace, ROOT, sseFrames } from "./lib.js";

let models = [];
let panes = [];
let controllers = [];
// DPO rows made here, not yet saved: kept in this browser's storage (read again before each
// change, so two Playground tabs add to one list), so that a reload or a closed tab loses none;
// a save uploads them and takes them off the list. Storage that is blocked, full or holds
// something else leaves the pairs in this page only.
const PREFERENCES_KEY = "tuneforge.preferences";
let unsaved = [];  // the list when storage cannot hold it

function storedPreferences() {
  try {
    const value = JSON.parse(localStorage.getItem(PREFERENCES_KEY) || "[]");
    return Array.isArray(value) ? value : [];
  } catch { return unsaved; }
}

function keepPreferences(list) {
  unsaved = list;
  try { localStorage.setItem(PREFERENCES_KEY, JSON.stringify(list)); } catch { /* page only */ }
  showPreferences();
}

function paneView(index, modelId) {
  const id = `pane-${index}`;
  const select = el("select", { id: `${id}-model`, "aria-label": `Model of pane ${index + 1}` },
    models.map((m) => el("option", { value: m.id, selected: m.id === modelId }, m.id)));
  const system = el("textarea", { id: `${id}-system`, rows: 2, placeholder: "(the shared system prompt)" });
  const turns = el("div", { class: "turns", id: `${id}-turns`, "aria-live": "polite" });
  const meta = el("p", { class: "meta", id: `${id}-meta` });
  const node = el("section", { class: "pane", "aria-label": `Pane ${index + 1}` },
    el("div", { class: "field" }, el("label", { for: select.id }, `Model ${index + 1}`), select),
    el("details", {}, el("summary", {}, "This pane's own system prompt (e.g. a few-shot prompt)"),
      el("label", { for: system.id, class: "sr-only" }, `System prompt of pane ${index + 1}`), system),
    turns, meta);
  return { node, select, system, turns, meta, history: [] };
}

function renderPanes() {
  const q = params();
  const count = Number($("#panes").value);
  const wanted = [q.get("model"), q.get("model2"), q.get("model3")];
  const old = panes;
  panes = [];
  for (let i = 0; i < count; i++) {
    const keep = old[i];
    const fallback = models[i % Math.max(1, models.length)];
    const chosen = keep ? keep.select.value : wanted[i] || (fallback && fallback.id);
    const pane = paneView(i, chosen);
    if (keep) { pane.history = keep.history; pane.system.value = keep.system.value; pane.turns.replaceChildren(...keep.turns.childNodes); }
    panes.push(pane);
  }
  replace("#pane-list", panes.map((p) => p.node));
}

function turn(who, text) {
  const body = el("div", { class: "text" }, text);
  return { node: el("div", { class: "turn" }, el("div", { class: "who" }, who), body), body };
}

const TOP = 5;  // alternatives asked for and shown per token
// 1 % and up with one decimal; below, two significant digits (a token at 0.0061 % is not 0)
function percent(logprob) {
  const p = 100 * Math.exp(logprob);
  return `${p >= 1 ? p.toFixed(1) : p.toPrecision(2)} %`;
}

// The answer as its tokens (OpenAI's logprobs.content), each shaded by how unlikely it was, and
// a table of every token with its probability and the likeliest alternatives. A token can hold
// part of a character: the text is rebuilt from the tokens' bytes, so a character shows in the
// token that completes it.
function probabilities(entries) {
  const decoder = new TextDecoder("utf-8");
  const spans = entries.map((e) => {
    const piece = decoder.decode(new Uint8Array(e.bytes || []), { stream: true });
    const alternatives = e.top_logprobs.map((t) => `${JSON.stringify(t.token)} ${percent(t.logprob)}`).join(", ");
    const shade = (1 - Math.exp(e.logprob)) * 0.55;
    return el("span", { class: "tok", style: `background: rgba(230, 140, 0, ${shade.toFixed(3)})`,
      title: `${percent(e.logprob)}; likeliest: ${alternatives}` }, piece);
  });
  const rows = entries.map((e, i) => el("tr", {},
    el("td", { class: "num" }, i + 1),
    el("td", {}, el("code", {}, JSON.stringify(e.token))),
    el("td", { class: "num" }, percent(e.logprob)),
    el("td", {}, e.top_logprobs.map((t) => `${JSON.stringify(t.token)} ${percent(t.logprob)}`).join(", "))));
  const table = el("details", { class: "probs" }, el("summary", {}, `Token probabilities (${entries.length})`),
    el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["#", "Token", "Probability", `Likeliest ${TOP}`].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))));
  return { spans, table };
}

async function ask(pane, prompt, settings, signal) {
  const system = pane.system.value.trim() || $("#system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...pane.history, { role: "user", content: prompt }];
  pane.turns.append(turn("You", prompt).node);
  const answer = turn(pane.select.value, "");
  pane.turns.append(answer.node);
  const started = performance.now();
  let first = null, text = "", count = 0, finish = null;
  const entries = [];
  const withProbs = $("#show-probs").checked;
  try {
    const asked = withProbs ? { logprobs: true, top_logprobs: TOP } : {};
    // sent either way: a server started with --store would otherwise keep what is not ticked
    asked.store = $("#keep").checked;
    if (asked.store) asked.metadata = { source: "playground" };
    const response = await api("/v1/chat/completions", {
      method: "POST", raw: true, signal,
      json: { model: pane.select.value, messages, stream: true, stream_options: { include_usage: true }, ...settings, ...asked },
    });
    for await (const frame of sseFrames(response, signal)) {
      if (frame.data === "[DONE]") break;
      const chunk = JSON.parse(frame.data);
      if (chunk.error) throw new Error(chunk.error.message);  // failed mid-stream, or not kept
      const choice = chunk.choices && chunk.choices[0];
      if (chunk.usage) count = chunk.usage.completion_tokens;
      if (!choice) continue;
      if (choice.logprobs && choice.logprobs.content) entries.push(...choice.logprobs.content);
      const piece = (choice.delta && choice.delta.content) || "";
      if (piece && first === null) first = performance.now() - started;
      text += piece;
      answer.body.textContent = text;  // model output is text, never HTML
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (withProbs && entries.length) {
      const shown = probabilities(entries);
      answer.body.replaceChildren(...shown.spans);
      answer.node.append(shown.table);
    }
    pane.history.push({ role: "user", content: prompt }, { role: "assistant", content: text });
    pane.last = { messages, text, finish, node: answer.node };  // what a preference compares
    const secs = (performance.now() - started) / 1000;
    pane.meta.textContent = `${count || "?"} tokens in ${secs.toFixed(1)} s` +
      (first !== null ? `, first token after ${(first / 1000).toFixed(2)} s` : "") + (finish ? ` · stopped: ${finish}` : "");
  } catch (err) {
    pane.last = null;
    if (err.name === "AbortError") { answer.body.textContent = text + " (stopped)"; return; }
    answer.body.textContent = "";
    answer.body.append(el("span", { class: "error" }, err.message));
  }
}

// A pane's last answer can be half of a DPO pair when it ended by itself (not cut at the token
// limit: a preferred output must not teach the cut) and neither it nor its messages are empty
// (the validator refuses empty content).
function comparable(pane) {
  const last = pane.last;
  return last && last.finish !== "length" && last.text.trim() &&
    last.messages.every((m) => String(m.content || "").trim());
}

// After a turn: a "Prefer this answer" button under each answer that another pane's answer to
// the very same messages can be compared with (same system prompt and history, other text).
function offerPreferences() {
  const done = panes.filter(comparable);
  for (const pane of done) {
    const rivals = done.filter((o) => o !== pane && o.last.text !== pane.last.text &&
      JSON.stringify(o.last.messages) === JSON.stringify(pane.last.messages));
    if (!rivals.length) continue;
    const button = el("button", { type: "button", class: "secondary prefer",
      "aria-label": `Prefer this answer (pane ${panes.indexOf(pane) + 1})`,
      onclick: () => {
        const list = storedPreferences();
        for (const rival of rivals) {
          list.push({
            input: { messages: pane.last.messages },
            preferred_output: [{ role: "assistant", content: pane.last.text }],
            non_preferred_output: [{ role: "assistant", content: rival.last.text }],
          });
        }
        for (const b of document.querySelectorAll("button.prefer")) b.remove();
        pane.last.node.append(el("p", { class: "ok" }, "✓ Preferred"));
        keepPreferences(list);
        $("#pref-save").focus();  // the pressed button is gone
      } }, "Prefer this answer");
    pane.last.node.append(button);
  }
}

function showPreferences() {
  const count = storedPreferences().length;
  $("#prefs").hidden = !count;
  $("#pref-count").textContent = `${count} preference pair${count === 1 ? "" : "s"} not saved yet.`;
}

async function savePreferences() {
  const saving = storedPreferences();
  const lines = saving.map((row) => `${JSON.stringify(row)}\n`);
  const form = new FormData();
  form.append("file", new Blob(lines, { type: "application/jsonl" }), "preferences.jsonl");
  form.append("purpose", "fine-tune");
  $("#pref-save").disabled = true;
  try {
    const file = await api("/v1/files", { method: "POST", form });
    replace("#pref-saved", el("p", {}, `Saved ${lines.length} pair${lines.length === 1 ? "" : "s"} as `, link(`${ROOT}/data/${file.id}`, file.filename),
      " (", el("code", {}, file.id), "): ", link(`${ROOT}/jobs/new?training_file=${file.id}&method=dpo`, "start a DPO job on it"), "."));
    notice(`Saved ${file.filename}.`);
    // off the list: the pairs saved, not those another tab (or a click) added meanwhile
    const sent = new Set(lines.map((line) => line.trim()));
    keepPreferences(storedPreferences().filter((row) => !sent.has(JSON.stringify(row))));
  } catch (err) {
    replace("#pref-saved", el("p", { class: "error" }, err.message));
  } finally {
    $("#pref-save").disabled = false;
  }
}

// The answer format as OpenAI's response_format (none for text). A schema that is not JSON is
// sent as text: the API's 400 says what is wrong, in the pane.
function responseFormat() {
  const kind = $("#format").value;
  if (kind === "text") return null;
  if (kind === "json_object") return { type: "json_object" };
  let schema = $("#schema").value;
  try { schema = JSON.parse(schema); } catch { /* sent as text */ }
  return { type: "json_schema", json_schema: { name: "answer", schema } };
}

async function main() {
  models = (await api("/v1/models")).data;
  renderPanes();
  $("#panes").addEventListener("change", renderPanes);
  $("#format").addEventListener("change", () => { $("#schema-field").hidden = $("#format").value !== "json_schema"; });
  $("#reset-btn").addEventListener("click", () => {
    for (const p of panes) { p.history = []; p.last = null; p.turns.replaceChildren(); p.meta.textContent = ""; }
    notice("New conversation.");
  });
  $("#stop-btn").addEventListener("click", () => controllers.forEach((c) => c.abort()));
  $("#pref-save").addEventListener("click", savePreferences);
  $("#pref-discard").addEventListener("click", () => {
    if (window.confirm("Discard the preference pairs not saved yet?")) keepPreferences([]);
  });
  window.addEventListener("storage", (e) => { if (e.key === PREFERENCES_KEY) showPreferences(); });
  showPreferences();  // pairs made before a reload
  $("#prompt").addEventListener("keydown", (e) => {  // Ctrl+Enter (or Cmd+Enter) sends
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  $("#chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const prompt = $("#prompt").value.trim();
    if (!prompt) { notice("Write a message first."); $("#prompt").focus(); return; }
    const settings = {
      temperature: Number($("#temperature").value),
      top_p: Number($("#top_p").value),
      max_tokens: Number($("#max_tokens").value),
    };
    const format = responseFormat();
    if (format) settings.response_format = format;
    $("#prompt").value = "";
    $("#send-btn").disabled = true;
    $("#stop-btn").disabled = false;
    controllers = panes.map(() => new AbortController());
    for (const b of document.querySelectorAll("button.prefer")) b.remove();  // an older turn's
    await Promise.all(panes.map((p, i) => ask(p, prompt, settings, controllers[i].signal)));
    offerPreferences();
    $("#send-btn").disabled = false;
    $("#stop-btn").disabled = true;
    notice("Answered.");
  });
}

main().catch((err) => notice(err.message));
