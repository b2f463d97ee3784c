// Models: what the server answers for; chat with each, export and download a job's model
// (POST /v1/fine_tuning/jobs/{id}/exports, then /v1/files/{file_id}/content), delete it.
import { $, api, download, el, notice, replace, ROOT, showError, table, when } from "./lib.js";

const CHOICES = [
  ["gguf f16", { format: "gguf", quant: "f16" }, "GGUF f16 (llama.cpp, LM Studio)"],
  ["gguf q8_0", { format: "gguf", quant: "q8_0" }, "GGUF q8_0 (half the size)"],
  ["ollama", { format: "gguf", quant: "f16", ollama: true }, "GGUF + Ollama Modelfile (.tar)"],
  ["merged", { format: "merged" }, "Merged Hugging Face folder (.tar)"],
  ["adapter", { format: "adapter" }, "LoRA adapter (.tar; peft, vLLM)"],
];

async function exportAndDownload(job, modelId, choice, status) {
  const [, body, label] = CHOICES.find(([key]) => key === choice);
  status.textContent = `Exporting: ${label}…`;
  const url = `/v1/fine_tuning/jobs/${job.id}/exports`;
  let exp = await api(url, { method: "POST", json: { ...body, model: modelId } });
  while (exp.status === "queued" || exp.status === "running") {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    exp = await api(`${url}/${exp.id}`);
    status.textContent = `Exporting: ${label} (${exp.status})…`;
  }
  if (exp.status !== "succeeded") {
    status.textContent = `Export failed: ${exp.error ? exp.error.message : exp.status}`;
    return;
  }
  const file = await api(`/v1/files/${exp.file_id}`);
  await download(`/v1/files/${exp.file_id}/content`, file.filename);
  status.textContent = `Downloaded ${file.filename} (${file.bytes.toLocaleString("en-US")} bytes).`;
}

function exportControls(job, model, index) {
  const id = `export-${index}`;
  const select = el("select", { id, "aria-label": `Export format for ${model.id}` },
    CHOICES.map(([key, , label]) => el("option", { value: key }, label)));
  const status = el("span", { class: "muted", role: "status", id: `${id}-status` });
  const button = el("button", { type: "button", class: "secondary", "aria-label": `Export and download ${model.id}`,
    onclick: async () => {
      button.disabled = true;
      try { await exportAndDownload(job, model.id, select.value, status); }
      catch (err) { status.textContent = err.message; }
      button.disabled = false;
    } }, "Export and download");
  return [select, button, status];
}

async function render() {
  const [models, jobs] = await Promise.all([api("/v1/models"), api("/v1/fine_tuning/jobs?limit=100")]);
  const jobOf = new Map(jobs.data.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j]));
  replace("#models", table([
    { label: "Model", value: (m) => el("code", {}, m.id) },
    { label: "Kind", value: (m) => (jobOf.has(m.id) ? "fine-tuned (job)" : m.owned_by === "user" ? "fine-tuned (tuneforge train; on disk in its run folder)" : "base") },
    { label: "Created", value: (m) => when(m.created) },
    { label: "Actions", value: (m) => {
      const job = jobOf.get(m.id);
      const index = models.data.indexOf(m);
      return el("div", { class: "row" },
        el("a", { class: "button secondary", href: `${ROOT}/playground?model=${encodeURIComponent(m.id)}` }, "Chat"),
        job ? el("a", { class: "button secondary", href: `${ROOT}/jobs/${job.id}` }, "Job") : null,
        job ? exportControls(job, m, index) : null,
        job ? el("button", { type: "button", class: "danger", "aria-label": `Delete ${m.id}`,
          onclick: async () => {
            if (!confirm(`Delete ${m.id}? The run directory stays on disk.`)) return;
            try { await api(`/v1/models/${encodeURIComponent(m.id)}`, { method: "DELETE" }); notice(`Deleted ${m.id}.`); render(); }
            catch (err) { notice(err.message); }
          } }, "Delete") : null);
    } },
  ], models.data));
}

render().catch((err) => showError("#models", err));
