// One data file: the validation report, a length histogram, the time estimate and the
// trained-token view, all for the chosen model's tokenizer and chat template.
import { $, api, baseModels, duration, el, fmt, notice, pageData, params, replace, ROOT, showError, table } from "./lib.js";

const fileId = pageData("file");
const PAGE = 5;
let offset = 0;
let nextOffset = null;
let file = null;

const model = () => $("#model").value;

function issueTable(issues) {
  return table([
    { label: "Line", value: (i) => i.line, num: true },
    { label: "Field", value: (i) => (i.field ? el("code", {}, i.field) : "–") },
    { label: "Check", value: (i) => el("code", {}, i.name) },
    { label: "What to do", value: (i) => i.message },
  ], issues);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function histogram(h, maxLen) {
  const target = $("#histogram");
  if (!h.counts.length) { replace(target, el("p", { class: "muted" }, "No valid examples.")); return; }
  const W = 640, H = 180, pad = 28;
  const top = Math.max(...h.counts);
  const bw = (W - pad * 2) / h.counts.length;
  const last = h.edges[h.edges.length - 1];
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H + 24}`, role: "img", width: "100%",
    "aria-label": `Histogram of example lengths: ${h.counts.length} bins from 0 to ${last} tokens; the tallest bin holds ${top} examples.` });
  h.counts.forEach((c, i) => {
    const bh = top ? (c / top) * (H - pad) : 0;
    const bar = svg("rect", { class: "hist-bar", x: pad + i * bw + 1, y: H - bh, width: Math.max(1, bw - 2), height: bh });
    bar.append(svg("title", {}, `${h.edges[i]}–${h.edges[i + 1]} tokens: ${c} examples`));
    chart.append(bar);
  });
  chart.append(svg("text", { class: "hist-axis", x: pad, y: H + 16 }, "0"));
  chart.append(svg("text", { class: "hist-axis", x: W - pad, y: H + 16, "text-anchor": "end" }, `${last} tokens`));
  chart.append(svg("text", { class: "hist-axis", x: 2, y: pad - 10 }, `${top}`));
  if (maxLen && maxLen <= last) {
    const x = pad + (maxLen / last) * (W - pad * 2);
    chart.append(svg("line", { class: "hist-limit", x1: x, x2: x, y1: pad - 8, y2: H }));
    chart.append(svg("text", { class: "hist-axis", x: x - 4, y: pad - 12, "text-anchor": "end" }, `max ${maxLen}`));
  }
  replace(target, chart);
  $("#histogram-caption").textContent = `Examples per length in tokens (${h.counts.length} bins of ${h.edges[1]} tokens)` +
    (maxLen && maxLen <= last ? `; the dashed line is the maximum length, ${maxLen} tokens: longer examples are cut.` : ".");
}

function renderReport(r) {
  const stats = r.token_stats;
  const dist = stats.tokens_per_example || {};
  const errorCount = Object.values(r.format_errors).reduce((a, b) => a + b, 0) + Object.values(r.file_errors).reduce((a, b) => a + b, 0);
  const warned = Object.entries(r.warnings).filter(([, v]) => v);
  replace("#validation",
    el("p", { class: r.ok ? "" : "error", role: r.ok ? null : "alert", id: "validation-verdict" },
      r.ok ? `No errors: ${r.n_valid_examples} of ${r.n_examples} examples are ready to train (format ${r.format}).`
        : `${errorCount} error(s) in ${r.n_examples} examples: fix them and upload the file again.`),
    el("dl", { class: "summary" },
      el("dt", {}, "Examples"), el("dd", {}, `${fmt(r.n_examples)} (${fmt(r.n_valid_examples)} valid)`),
      el("dt", {}, "Tokens per example"), el("dd", {}, dist.mean === undefined ? "–" : `mean ${fmt(dist.mean)}, median ${fmt(dist.median)}, max ${fmt(dist.max)}`),
      el("dt", {}, "Trained tokens"), el("dd", {}, fmt(stats.total_trained_tokens)),
      el("dt", {}, "Maximum length"), el("dd", {}, `${fmt(stats.max_seq_len)} tokens`),
      el("dt", {}, "Suggested epochs"), el("dd", {}, fmt(r.suggested_epochs)),
      el("dt", {}, "Billed tokens"), el("dd", { id: "billed" }, `${fmt(r.billed_tokens)} (tokens per epoch × epochs, as OpenAI counts them)`)),
    r.errors.length ? [el("h3", {}, "Errors"), issueTable(r.errors)] : null,
    warned.length ? [el("h3", {}, "Warnings"), el("p", {}, warned.map(([k, v]) => `${k}: ${v}`).join(", ")),
      r.warning_details.length ? issueTable(r.warning_details.slice(0, 50)) : null] : null);
  histogram(r.length_histogram, stats.max_seq_len);
  renderEstimate(r);
}

function renderEstimate(r) {
  const est = r.training_time_estimate;
  replace("#estimate", el("p", {}, est
    ? `Measured here: ${fmt(est.tokens_per_second)} tokens/s over ${fmt(est.calibration_tokens)} tokens, so ${est.epochs} epoch(s) of ${fmt(est.tokens_per_epoch)} tokens take about ${duration(est.seconds)} (${est.method} on ${est.device}).`
    : `${fmt(r.billed_tokens)} billed tokens over ${r.suggested_epochs} epoch(s). Measure how long that takes on this machine (a few timed training steps):`));
}

async function validate(estimate = false) {
  $("#validation").setAttribute("aria-busy", "true");
  const q = new URLSearchParams({ model: model() });
  if (estimate) q.set("estimate", "true");
  try {
    const r = await api(`/v1/files/${fileId}/validation?${q}`);
    renderReport(r);
    return r;
  } catch (err) {
    replace("#validation", el("p", { class: "error", role: "alert" }, err.message));
  }
}

function renderExample(item) {
  const title = item.errors.length && !item.segments
    ? `Line ${item.line}: not usable`
    : `Line ${item.line}: ${item.n_tokens} tokens, ${item.n_trained} trained` + (item.truncated ? `, cut from ${item.full_length}` : "");
  if (!item.segments) {
    return el("article", { class: "example" }, el("h3", {}, title),
      el("p", { class: "error" }, item.errors.map((e) => `${e.field ? e.field + ": " : ""}${e.message}`).join("; ")));
  }
  const pre = el("pre", {}, item.segments.map((s) => s.trained
    ? el("mark", { class: "trained" }, el("span", { class: "sr-only" }, "trained: "), s.text)
    : s.text));
  return el("article", { class: "example" }, el("h3", {}, title), pre,
    item.truncated ? el("span", { class: "cut" }, `✂ Cut here: only the first ${item.n_tokens} of ${item.full_length} tokens are trained on; raise max_seq_len or shorten this example.`) : null);
}

async function preview() {
  const q = new URLSearchParams({ model: model(), offset, limit: PAGE });
  try {
    const page = await api(`/v1/files/${fileId}/preview?${q}`);
    nextOffset = page.next_offset;
    replace("#preview", page.data.map(renderExample));
    $("#prev-btn").disabled = offset === 0;
    $("#next-btn").disabled = nextOffset === null;
  } catch (err) {
    replace("#preview", el("p", { class: "error", role: "alert" }, err.message));
  }
}

async function main() {
  file = await api(`/v1/files/${fileId}`);
  document.querySelector("h1").textContent = `Data file: ${file.filename}`;
  document.title = `${file.filename} · tuneforge Studio`;
  const models = await baseModels();
  const wanted = params().get("model");
  replace("#model", models.map((m) => el("option", { value: m.id, selected: m.id === wanted }, m.id)));
  const update = () => {
    $("#train-link").href = `${ROOT}/jobs/new?training_file=${encodeURIComponent(fileId)}&model=${encodeURIComponent(model())}`;
  };
  update();
  $("#model").addEventListener("change", () => { update(); offset = 0; validate(); preview(); });
  $("#prev-btn").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); preview(); });
  $("#next-btn").addEventListener("click", () => { if (nextOffset !== null) { offset = nextOffset; preview(); } });
  $("#estimate-btn").addEventListener("click", async () => {
    $("#estimate-btn").disabled = true;
    notice("Timing training steps on this machine…");
    await validate(true);
    notice("Estimate measured.");
    $("#estimate-btn").disabled = false;
  });
  await Promise.all([validate(), preview()]);
}

main().catch((err) => showError("#validation", err));
