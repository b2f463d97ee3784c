// New job: a form generated from the server's job schema (GET /v1/tuneforge/job_form), so every
// method and training setting the API accepts appears here with its description as help, and
// errors come back from the same checks the API runs, shown next to the field they name.
import { $, api, baseModels, el, notice, params, replace, ROOT, showError } from "./lib.js";

let form = null;   // the job_form answer
let files = [];

function resolve(schema, root) {
  while (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    schema = root.$defs[name];
  }
  return schema || {};
}

// An optional object (`X | None`) is anyOf [X, null]: the X.
function objectOf(schema, root) {
  schema = resolve(schema, root);
  if (schema.anyOf) {
    const found = schema.anyOf.map((v) => resolve(v, root)).find((v) => v.properties);
    if (found) return found;
  }
  return schema;
}

// What kind of input a property needs: {kind, options, auto, nullable}.
function describe(prop, root) {
  prop = resolve(prop, root);
  const variants = prop.anyOf ? prop.anyOf.map((v) => resolve(v, root)) : [prop];
  const info = { kind: "text", options: null, auto: false, nullable: false };
  const enums = [];
  for (const v of variants) {
    if (v.type === "null") info.nullable = true;
    else if (v.const !== undefined) enums.push(v.const);
    else if (v.enum) enums.push(...v.enum);
    else if (v.type === "boolean") info.kind = "boolean";
    else if (v.type === "integer" || v.type === "number") info.kind = info.kind === "list" ? "list" : v.type;
    else if (v.type === "array") info.kind = "list";
  }
  if (enums.includes("auto") && (info.kind === "integer" || info.kind === "number")) info.auto = true;
  else if (enums.length && info.kind === "text") { info.kind = "select"; info.options = enums; }
  else if (enums.length && info.kind === "list") info.options = enums;
  return info;
}

function fieldId(group, name) { return `${group}-${name}`; }

function input(group, name, prop, root, { label, param, value } = {}) {
  const info = describe(prop, root);
  const id = fieldId(group, name);
  const resolved = resolve(prop, root);
  const def = value !== undefined ? value : resolved.default;
  const help = resolved.description || (prop.description ?? "");
  const attrs = { id, name, "data-param": param, "data-kind": info.kind, "data-auto": info.auto ? "1" : null,
    "aria-describedby": `${id}-help ${id}-error` };
  let control;
  if (info.kind === "boolean") {
    control = el("input", { ...attrs, type: "checkbox", checked: def === true });
  } else if (info.kind === "select") {
    control = el("select", attrs,
      info.nullable ? el("option", { value: "" }, "(none)") : null,
      info.options.map((o) => el("option", { value: String(o), selected: String(o) === String(def) }, String(o))));
  } else {
    const numeric = (info.kind === "integer" || info.kind === "number") && !info.auto;
    const shown = def === null || def === undefined ? "" : Array.isArray(def) ? def.join(",") : String(def);
    control = el("input", { ...attrs, type: numeric ? "number" : "text", value: shown,
      step: info.kind === "number" ? "any" : null,
      placeholder: info.auto ? "auto" : info.nullable ? "(none)" : null,
      inputmode: info.auto ? "decimal" : null });
  }
  control.dataset.default = JSON.stringify(def === undefined ? null : def);
  const text = label || name;
  const labelNode = info.kind === "boolean"
    ? el("label", { for: id }, control, " ", text)
    : el("label", { for: id }, text);
  return el("div", { class: "field" }, labelNode, info.kind === "boolean" ? null : control,
    el("small", { id: `${id}-help` }, help + (info.auto ? " (a number, or auto)" : "")),
    el("span", { class: "field-error", id: `${id}-error`, role: "status" }));
}

function readValue(control) {
  const kind = control.dataset.kind;
  if (kind === "boolean") return control.checked;
  const raw = control.value.trim();
  if (raw === "") return null;
  if (control.dataset.auto && raw === "auto") return "auto";
  if (kind === "integer" || kind === "number") {
    const n = Number(raw);
    return Number.isFinite(n) ? n : raw;  // the API names what is wrong
  }
  if (kind === "list") return raw === "all-linear" ? raw : raw.split(",").map((s) => s.trim()).filter(Boolean);
  return raw;
}

function changed(control) {
  const value = readValue(control);
  const def = JSON.parse(control.dataset.default);
  if (value === null) return false;
  return JSON.stringify(value) !== JSON.stringify(def);
}

function methodObject(type) {
  const root = form.job;
  const method = resolve(root.$defs.Method, root);
  return method.properties[type] ? objectOf(method.properties[type], root) : {};
}

// A JSON-valued field (e.g. reinforcement's `grader`): a textarea whose text is parsed on submit.
function jsonInput(id, name, prop, param, root) {
  const resolved = resolve(prop, root);
  const control = el("textarea", { id, name, rows: 5, class: "mono", "data-param": param, "data-kind": "json",
    "aria-describedby": `${id}-help ${id}-error`, placeholder: '{"type": "string_check", …}' });
  control.dataset.default = "null";
  return el("div", { class: "field wide" }, el("label", { for: id }, name), control,
    el("small", { id: `${id}-help` }, (resolved.description || "") + " (JSON)"),
    el("span", { class: "field-error", id: `${id}-error`, role: "status" }));
}

function renderMethodFields() {
  const type = $("#job-method").value;
  const holder = methodObject(type);
  const root = form.job;
  const fields = [];
  for (const [name, prop] of Object.entries(holder.properties || {})) {
    if (name === "hyperparameters") {
      const hp = objectOf(prop, root);
      for (const [hname, hprop] of Object.entries(hp.properties || {})) {
        fields.push(input("hp", hname, hprop, root, { param: `method.${type}.hyperparameters.${hname}` }));
      }
    } else {
      fields.push(jsonInput(`mt-${name}`, name, prop, `method.${type}.${name}`, root));
    }
  }
  replace("#method-fields", fields.length ? fields : el("p", { class: "muted" }, `The ${type} method has no settings here.`));
}

function buildRequest() {
  const body = { model: $("#job-model").value, training_file: $("#job-training_file").value };
  const validation = $("#job-validation_file").value;
  if (validation) body.validation_file = validation;
  const suffix = $("#job-suffix").value.trim();
  if (suffix) body.suffix = suffix;
  const seed = $("#job-seed").value.trim();
  if (seed) body.seed = Number(seed);
  const type = $("#job-method").value;
  const hyperparameters = {};
  for (const c of document.querySelectorAll("#method-fields [data-param]:not([data-kind='json'])")) {
    const v = readValue(c);
    if (v !== null && changed(c)) hyperparameters[c.name] = v;
  }
  body.method = { type };
  const settings = {};
  if (Object.keys(hyperparameters).length) settings.hyperparameters = hyperparameters;
  for (const c of document.querySelectorAll("#method-fields [data-kind='json']")) {
    const text = c.value.trim();
    if (!text) continue;
    try { settings[c.name] = JSON.parse(text); } catch { settings[c.name] = text; }  // the API names what is wrong
  }
  if (Object.keys(settings).length) body.method[type] = settings;
  const config = {};
  for (const c of document.querySelectorAll("[data-param^='training_config.']")) {
    if (changed(c)) config[c.name] = readValue(c);
  }
  if (Object.keys(config).length) body.training_config = config;
  return body;
}

function yamlValue(v) {
  if (Array.isArray(v)) return `[${v.map(yamlValue).join(", ")}]`;
  if (typeof v === "string") return /^[\w./:-]+$/.test(v) && !/^(true|false|null|yes|no|on|off)$/i.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v);
}

function pyValue(v, indent = "") {
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (Array.isArray(v)) return `[${v.map((x) => pyValue(x)).join(", ")}]`;
  if (typeof v === "object") {
    const inner = indent + "    ";
    return "{\n" + Object.entries(v).map(([k, x]) => `${inner}${JSON.stringify(k)}: ${pyValue(x, inner)},`).join("\n") + `\n${indent}}`;
  }
  return JSON.stringify(v);
}

function fileName(id) { const f = files.find((x) => x.id === id); return f ? f.filename : id; }

function renderCode() {
  const body = buildRequest();
  const hp = (body.method[body.method.type] || {}).hyperparameters || {};
  const ours = { n_epochs: "epochs", batch_size: "batch_size", learning_rate_multiplier: "learning_rate_multiplier" };
  const lines = [`# tuneforge train --config job.yaml  (file names as uploaded; use their paths on your disk)`,
    `model: ${yamlValue(body.model)}`, `train_file: ${yamlValue(fileName(body.training_file))}`];
  if (body.validation_file) lines.push(`validation_file: ${yamlValue(fileName(body.validation_file))}`);
  if (body.suffix) lines.push(`suffix: ${yamlValue(body.suffix)}`);
  if (body.seed !== undefined) lines.push(`seed: ${body.seed}`);
  // OpenAI's method → our config's fields (the mapping of jobs/spec.py).
  const objective = { dpo: "dpo", reinforcement: "grpo" }[body.method.type];
  if (objective) lines.push(`objective: ${objective}`);
  if (hp.beta !== undefined) lines.push(`dpo_beta: ${yamlValue(hp.beta)}`);
  if (hp.compute_multiplier !== undefined) lines.push(`grpo_group_size: ${Math.max(2, Math.round(4 * Number(hp.compute_multiplier)))}`);
  if (hp.eval_interval !== undefined) lines.push(`eval_every: ${yamlValue(hp.eval_interval)}`);
  const settings = body.method[body.method.type] || {};
  if (settings.grader !== undefined) lines.push(`grader: ${JSON.stringify(settings.grader)}`);
  if (settings.response_format !== undefined) lines.push(`response_format: ${JSON.stringify(settings.response_format)}`);
  for (const [k, v] of Object.entries(hp)) {
    if (ours[k]) lines.push(`${ours[k]}: ${yamlValue(v)}`);
    else if (!["beta", "compute_multiplier", "eval_interval"].includes(k)) lines.push(`# ${k}: ${yamlValue(v)} (a job setting with no tuneforge train field)`);
  }
  for (const [k, v] of Object.entries(body.training_config || {})) lines.push(`${k}: ${yamlValue(v)}`);
  $("#code-yaml").textContent = lines.join("\n");
  const json = JSON.stringify(body, null, 2).replace(/'/g, "'\\''");
  $("#code-curl").textContent = `curl ${location.origin}/v1/fine_tuning/jobs \\\n  -H "Content-Type: application/json" \\\n` +
    `  -H "Authorization: Bearer $TUNEFORGE_API_KEY" \\\n  -d '${json}'`;
  const args = [`    model=${pyValue(body.model)},`, `    training_file=${pyValue(body.training_file)},`];
  if (body.validation_file) args.push(`    validation_file=${pyValue(body.validation_file)},`);
  if (body.suffix) args.push(`    suffix=${pyValue(body.suffix)},`);
  if (body.seed !== undefined) args.push(`    seed=${body.seed},`);
  args.push(`    method=${pyValue(body.method, "    ")},`);
  if (body.training_config) args.push(`    extra_body={"training_config": ${pyValue(body.training_config, "    ")}},`);
  $("#code-python").textContent = `from openai import OpenAI\n\nclient = OpenAI(base_url="${location.origin}/v1", api_key="unused-or-your-key")\n` +
    `job = client.fine_tuning.jobs.create(\n${args.join("\n")}\n)\nprint(job.id, job.status)`;
}

function clearErrors() {
  $("#form-error").hidden = true;
  for (const c of document.querySelectorAll("[aria-invalid='true']")) c.removeAttribute("aria-invalid");
  for (const e of document.querySelectorAll(".field-error")) e.textContent = "";
}

function fieldFor(param) {
  if (!param) return null;
  const controls = [...document.querySelectorAll("[data-param]")];
  const exact = controls.find((c) => c.dataset.param === param);
  if (exact) return exact;
  const last = param.split(".").pop();
  const head = param.split(".")[0];
  return controls.find((c) => c.name === last && (c.dataset.param.startsWith(head) || head === "hyperparameters")) || null;
}

function showFieldError(err) {
  const control = fieldFor(err.param);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    $(`#${control.id}-error`).textContent = err.message;
    const details = control.closest("details");
    if (details) details.open = true;
    control.focus();
  }
  showError("#form-error", err);
}

async function main() {
  const [jobForm, models, fileList] = await Promise.all([
    api("/v1/tuneforge/job_form"), baseModels(), api("/v1/files")]);
  form = jobForm;
  files = fileList.data;
  const q = params();
  const root = form.job;
  const fileOptions = (selected, none) => [none ? el("option", { value: "" }, "(none)") : null,
    ...files.map((f) => el("option", { value: f.id, selected: f.id === selected }, `${f.filename} (${f.id})`))];
  const props = root.properties;
  const simple = [
    el("div", { class: "field" }, el("label", { for: "job-model" }, "Base model"),
      el("select", { id: "job-model", name: "model", "data-param": "model", "aria-describedby": "job-model-help job-model-error" },
        models.map((m) => el("option", { value: m.id, selected: m.id === q.get("model") }, m.id))),
      el("small", { id: "job-model-help" }, props.model.description || ""),
      el("span", { class: "field-error", id: "job-model-error", role: "status" })),
    el("div", { class: "field" }, el("label", { for: "job-training_file" }, "Training file"),
      el("select", { id: "job-training_file", name: "training_file", "data-param": "training_file", "aria-describedby": "job-training_file-error" },
        fileOptions(q.get("training_file"), false)),
      el("small", {}, files.length ? "" : "No files yet: upload one on the Data page."),
      el("span", { class: "field-error", id: "job-training_file-error", role: "status" })),
    el("div", { class: "field" }, el("label", { for: "job-validation_file" }, "Validation file (optional)"),
      el("select", { id: "job-validation_file", name: "validation_file", "data-param": "validation_file", "aria-describedby": "job-validation_file-error" },
        fileOptions(q.get("validation_file"), true)),
      el("small", {}, "Held-out examples: the validation loss is measured on them."),
      el("span", { class: "field-error", id: "job-validation_file-error", role: "status" })),
    input("job", "suffix", props.suffix, root, { label: "Suffix (part of the model's name)", param: "suffix", value: null }),
    el("div", { class: "field" }, el("label", { for: "job-method" }, "Method"),
      el("select", { id: "job-method", name: "method", "data-param": "method.type", "aria-describedby": "job-method-help job-method-error" },
        form.methods.map((m) => el("option", { value: m, selected: m === q.get("method") }, m))),
      el("small", { id: "job-method-help" }, "The methods this server accepts (OpenAI's method.type)."),
      el("span", { class: "field-error", id: "job-method-error", role: "status" })),
  ];
  const config = form.training_config;
  const simpleConfig = form.simple.training_config.filter((n) => config.properties[n]);
  for (const name of simpleConfig) {
    simple.push(input("tc", name, config.properties[name], config, { param: `training_config.${name}` }));
  }
  replace("#simple-fields", simple);
  renderMethodFields();
  const advanced = [input("job", "seed", props.seed, root, { label: "seed", param: "seed", value: null })];
  for (const [name, prop] of Object.entries(config.properties)) {
    if (!simpleConfig.includes(name)) advanced.push(input("tc", name, prop, config, { param: `training_config.${name}` }));
  }
  replace("#advanced-fields", advanced);
  $("#job-method").addEventListener("change", () => { renderMethodFields(); renderCode(); });
  $("#job-form").addEventListener("input", renderCode);
  $("#job-form").addEventListener("change", renderCode);
  renderCode();
  $("#job-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    $("#create-btn").disabled = true;
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: buildRequest() });
      notice(`Created ${job.id}.`);
      location.assign(`${ROOT}/jobs/${job.id}`);
    } catch (err) {
      showFieldError(err);
      $("#create-btn").disabled = false;
    }
  });
}

main().catch((err) => showError("#form-error", err));
