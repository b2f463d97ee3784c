// One fine-tuning job, live: status, progress and ETA, charts of every metric, events,
// checkpoints, and pause / resume / cancel. Updates come from the job's event stream
// (GET …/events?stream=true), replayed from the start on every load, so a reload or a server
// restart redraws the same points.
import { $, api, badge, duration, el, fmt, followJobEvents, notice, pageData, replace, ROOT, table, when } from "./lib.js";

const jobId = pageData("job");
const TERMINAL = ["succeeded", "failed", "cancelled"];
const points = new Map();     // step -> merged metrics
const overlay = new Map();    // step -> metrics of the overlaid job
let overlayId = "";
const seen = new Set();
let job = null;
let charts = null;
let drawQueued = false;
let lastLive = 0;

const SERIES = {
  loss: [["train_loss", "training loss", "#0b5cad"], ["valid_loss", "validation loss", "#c2410c"], ["full_valid_loss", "full validation loss", "#6d28d9"]],
  acc: [["train_mean_token_accuracy", "training token accuracy", "#0b5cad"], ["valid_mean_token_accuracy", "validation token accuracy", "#c2410c"]],
  lr: [["learning_rate", "learning rate", "#0f766e"], ["grad_norm", "gradient norm", "#9d174d"]],
};

const tick = (u, values) => values.map((v) => (v === null ? ""
  : Math.abs(v) > 0 && Math.abs(v) < 0.01 ? v.toExponential(1).replace(".0e", "e") : String(Number(v.toPrecision(6)))));

function makeChart(target, series, extra = [], twoScales = false, range = null) {
  const width = Math.max(280, $(target).clientWidth || 600);
  const opts = {
    width, height: 220,
    scales: { x: { time: false }, ...(range ? { y: { range } } : {}) },
    axes: [{ label: "step" }, { scale: "y", values: tick, size: 60 },
      ...(twoScales ? [{ scale: "g", side: 1, grid: { show: false }, values: tick, size: 50 }] : [])],
    series: [{ label: "step" },
      ...series.map(([, label, stroke], i) => ({ label, stroke, width: 2, spanGaps: true, scale: twoScales && i === 1 ? "g" : "y",
        points: { show: true, size: 4 } })),
      ...extra],
    legend: { live: false },
  };
  const data = [[], ...opts.series.slice(1).map(() => [])];
  return new window.uPlot(opts, data, $(target));
}

function ensureCharts() {
  if (charts || !window.uPlot) return;
  charts = {
    loss: makeChart("#loss-chart", SERIES.loss, [
      { label: "best validation loss", stroke: "#c2410c", width: 0, fill: "#c2410c", points: { show: true, size: 12, fill: "#ffffff", width: 3 } },
      { label: "overlay: training loss", stroke: "#64748b", width: 1.5, dash: [6, 4], spanGaps: true },
      { label: "overlay: validation loss", stroke: "#a16207", width: 1.5, dash: [2, 3], spanGaps: true },
    ]),
    acc: makeChart("#acc-chart", SERIES.acc, [], false, [0, 1]),
    lr: makeChart("#lr-chart", SERIES.lr, [], true),
  };
  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      chart.setSize({ width: Math.max(280, $(`#${name}-chart`).clientWidth), height: 220 });
    }
  });
}

function bestValid() {
  let best = null;
  for (const [step, m] of points) {
    if (m.valid_loss !== undefined && (best === null || m.valid_loss < best.value)) best = { step, value: m.valid_loss };
  }
  return best;
}

function draw() {
  drawQueued = false;
  ensureCharts();
  const steps = [...new Set([...points.keys(), ...overlay.keys()])].sort((a, b) => a - b);
  const col = (source, key) => steps.map((s) => (source.get(s) || {})[key] ?? null);
  const best = bestValid();
  if (charts) {
    charts.loss.setData([steps, ...SERIES.loss.map(([k]) => col(points, k)),
      steps.map((s) => (best && s === best.step ? best.value : null)),
      col(overlay, "train_loss"), col(overlay, "valid_loss")]);
    charts.acc.setData([steps, ...SERIES.acc.map(([k]) => col(points, k))]);
    charts.lr.setData([steps, ...SERIES.lr.map(([k]) => col(points, k))]);
  }
  $("#loss-chart").dataset.points = String(points.size);
  $("#loss-chart").dataset.steps = [...points.keys()].sort((a, b) => a - b).join(",");
  $("#loss-caption").textContent = `Training and validation loss by step (${points.size} points)` +
    (best ? `; the best validation loss, ${fmt(best.value)}, is at step ${best.step} (large ring).` : ".") +
    (overlayId ? ` Dashed: ${overlayId}.` : "");
  const recent = [...points.entries()].sort((a, b) => a[0] - b[0]).slice(-10);
  replace("#points", table([
    { label: "Step", value: ([s]) => s, num: true },
    { label: "Training loss", value: ([, m]) => m.train_loss, num: true },
    { label: "Validation loss", value: ([, m]) => m.valid_loss, num: true },
    { label: "Token accuracy", value: ([, m]) => m.train_mean_token_accuracy, num: true },
    { label: "Learning rate", value: ([, m]) => m.learning_rate, num: true },
    { label: "Gradient norm", value: ([, m]) => m.grad_norm, num: true },
  ], recent));
  renderProgress();
}

function queueDraw() {
  if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); }
}

function latest() {
  let last = null;
  for (const [step, m] of points) if (!last || step > last.step) last = { step, ...m };
  return last;
}

function renderProgress() {
  const last = latest();
  const total = last && last.total_steps;
  const bar = $("#progress");
  let text;
  if (job && job.status === "succeeded") { bar.value = 1; text = "Finished."; }
  else if (last && total) {
    bar.value = last.step / total;
    let eta = null;
    if (job && job.estimated_finish) eta = job.estimated_finish - Date.now() / 1000;
    else if (last.elapsed_seconds) eta = (last.elapsed_seconds / last.step) * (total - last.step);
    text = `step ${last.step} of ${total} (${Math.round((100 * last.step) / total)}%)` +
      (job && job.status === "running" && eta !== null ? `, about ${duration(eta)} left` : "") +
      ` · training loss ${fmt(last.train_loss)}`;
  } else {
    text = job ? `${job.status.replace("_", " ")}…` : "";
  }
  $("#progress-text").textContent = text;
  const final = job && TERMINAL.includes(job.status);
  if (final) text = job.status === "succeeded" ? "Finished." : `The job is ${job.status}.`;
  $("#progress-text").textContent = text;
  if ((Date.now() - lastLive > 15000 || final) && text) {  // throttled for screen readers
    lastLive = Date.now();
    $("#notice").textContent = text;
  }
}

function renderJob() {
  document.querySelector("h1").textContent = `Fine-tuning job ${job.id}`;
  const hp = job.hyperparameters || {};
  replace("#summary",
    el("dt", {}, "Status"), el("dd", { id: "job-status" }, badge(job.status)),
    el("dt", {}, "Method"), el("dd", {}, (job.method && job.method.type) || "supervised"),
    el("dt", {}, "Base model"), el("dd", {}, job.model),
    el("dt", {}, "Fine-tuned model"), el("dd", { id: "ft-model" }, job.fine_tuned_model || "–"),
    el("dt", {}, "Training file"), el("dd", {}, el("a", { href: `${ROOT}/data/${job.training_file}` }, job.training_file)),
    el("dt", {}, "Validation file"), el("dd", {}, job.validation_file || "–"),
    el("dt", {}, "Hyperparameters"), el("dd", {}, `epochs ${hp.n_epochs}, batch size ${hp.batch_size}, learning-rate multiplier ${hp.learning_rate_multiplier}`),
    el("dt", {}, "Trained tokens"), el("dd", {}, fmt(job.trained_tokens)),
    el("dt", {}, "Created"), el("dd", {}, when(job.created_at)),
    el("dt", {}, "Finished"), el("dd", {}, when(job.finished_at)));
  const active = ["validating_files", "queued", "running"].includes(job.status);
  $("#pause-btn").disabled = !active;
  $("#resume-btn").disabled = job.status !== "paused";
  $("#cancel-btn").disabled = TERMINAL.includes(job.status);
  const err = $("#job-error");
  if (job.error && job.error.message) {
    err.hidden = false;
    err.textContent = `${job.error.message}` + (job.error.param ? ` (field: ${job.error.param})` : "");
  } else err.hidden = true;
  if (job.fine_tuned_model && job.status === "succeeded") {
    const chat = $("#chat-link");
    chat.hidden = false;
    chat.href = `${ROOT}/playground?model=${encodeURIComponent(job.fine_tuned_model)}&model2=${encodeURIComponent(job.model)}`;
    const cmp = $("#compare-link");
    cmp.hidden = false;
    cmp.href = `${ROOT}/compare?model=${encodeURIComponent(job.fine_tuned_model)}&training_file=${encodeURIComponent(job.training_file)}`;
  }
  renderProgress();
}

function addEvent(e) {
  if (seen.has(e.id)) return;
  seen.add(e.id);
  const list = $("#events");
  list.append(el("li", { class: e.level }, el("time", { datetime: new Date(e.created_at * 1000).toISOString() }, when(e.created_at)), e.message));
  list.scrollTop = list.scrollHeight;
  if (e.type === "metrics" && e.data && e.data.step !== undefined) {
    points.set(e.data.step, { ...(points.get(e.data.step) || {}), ...e.data });
    queueDraw();
  }
  if (/stopped|resum/i.test(e.message) && e.level !== "info" || /resumed/i.test(e.message)) {
    const note = $("#resume-note");
    note.hidden = false;
    note.append(el("p", {}, `${when(e.created_at)}: ${e.message}`));
  }
}

async function renderCheckpoints() {
  const page = await api(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`);
  if (!page.data.length) { replace("#checkpoints", el("p", { class: "muted" }, "None yet: one is saved every epoch (or every checkpoint_every steps).")); return; }
  replace("#checkpoints", table([
    { label: "Step", value: (c) => c.step_number, num: true },
    { label: "Training loss", value: (c) => c.metrics.train_loss, num: true },
    { label: "Validation loss", value: (c) => c.metrics.valid_loss, num: true },
    { label: "Model id", value: (c) => el("code", {}, c.fine_tuned_model_checkpoint) },
    { label: "", value: (c) => el("a", { href: `${ROOT}/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Open in playground") },
  ], page.data));
}

async function action(name) {
  try {
    job = await api(`/v1/fine_tuning/jobs/${jobId}/${name}`, { method: "POST" });
    renderJob();
    notice(`Job ${name === "cancel" ? "cancelled" : name === "pause" ? "paused" : "resumed"}.`);
  } catch (err) {
    notice(err.message);
  }
}

async function setOverlay(id) {
  overlay.clear();
  overlayId = id;
  if (id) {
    const page = await api(`/v1/fine_tuning/jobs/${id}/events?limit=1000`);
    for (const e of page.data) if (e.type === "metrics" && e.data) overlay.set(e.data.step, e.data);
  }
  queueDraw();
}

async function main() {
  job = await api(`/v1/fine_tuning/jobs/${jobId}`);
  renderJob();
  ensureCharts();
  $("#pause-btn").addEventListener("click", () => action("pause"));
  $("#resume-btn").addEventListener("click", () => action("resume"));
  $("#cancel-btn").addEventListener("click", () => { if (confirm("Cancel this job? Its checkpoints stay on disk.")) action("cancel"); });
  const others = (await api("/v1/fine_tuning/jobs?limit=100")).data.filter((j) => j.id !== jobId);
  $("#overlay").append(...others.map((j) => el("option", { value: j.id }, `${j.id} (${j.status})`)));
  $("#overlay").addEventListener("change", (e) => setOverlay(e.target.value));
  renderCheckpoints().catch(() => {});
  followJobEvents(jobId, {
    onEvent: addEvent,
    onStatus: (updated) => {
      const changed = !job || updated.status !== job.status;
      job = updated;
      renderJob();
      if (changed) renderCheckpoints().catch(() => {});
    },
    onConnection: (message) => {
      $("#connection").textContent = message === "reconnected" ? "Reconnected to the server; the chart is up to date." : message;
      if (message === "reconnected") setTimeout(() => { $("#connection").textContent = ""; }, 5000);
    },
  });
  setInterval(() => { if (job && job.status === "running") renderCheckpoints().catch(() => {}); }, 15000);
}

main().catch((err) => { const e = $("#job-error"); e.hidden = false; e.textContent = err.message; });
