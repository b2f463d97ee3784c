// Evals: the evals on this server (GET /v1/evals) and a form for a new one (POST /v1/evals).
import { $, api, el, replace, ROOT, showError, table, when } from "./lib.js";

async function listEvals() {
  const evals = await api("/v1/evals?limit=100&order=desc");
  replace("#evals", evals.data.length ? table([
    { label: "Eval", value: (e) => el("a", { href: `${ROOT}/evals/${e.id}` }, e.name) },
    { label: "Criteria", value: (e) => e.testing_criteria.map((c) => `${c.name} (${c.type})`).join(", ") },
    { label: "Row fields", value: (e) => Object.keys(e.data_source_config.schema.properties.item.properties || {}).join(", ") },
    { label: "Created", value: (e) => when(e.created_at) },
  ], evals.data) : el("p", { class: "muted" }, "None yet: create one below."));
}

// Criteria that fit a stored completion's row: the answer is not empty.
const STORED_CRITERIA = `[
  {"type": "string_check", "name": "answered", "operation": "ne",
   "input": "{{ sample.output_text }}", "reference": ""}
]`;
let defaultCriteria = null;  // the form's first criteria text, while the user has not edited it

function showKind() {
  const stored = $("#kind").value !== "custom";
  $("#filter").closest(".field").hidden = !stored;
  $("#fields").closest(".field").hidden = stored;
  if (defaultCriteria === null) defaultCriteria = $("#criteria").defaultValue;
  if ([defaultCriteria, STORED_CRITERIA].includes($("#criteria").value)) {
    $("#criteria").value = stored ? STORED_CRITERIA : defaultCriteria;
  }
}
$("#kind").addEventListener("change", showKind);
const asked = new URLSearchParams(location.search);  // from the Logs page: its filter
if (asked.get("kind") === "stored_completions") {
  $("#kind").value = "stored_completions";
  $("#filter").value = asked.get("filter") || "";
}
showKind();  // also a form the browser restored with "Stored" chosen

function metadataFilter(text) {
  const pairs = {};
  for (const pair of text.split(",")) {
    if (!pair.trim()) continue;
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`Metadata filter "${pair.trim()}": write key=value`);
    pairs[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return pairs;
}

function itemSchema(text) {
  const fields = text.split(",").map((f) => f.trim()).filter(Boolean);
  const properties = Object.fromEntries(fields.map((f) => [f, { type: "string" }]));
  return { type: "object", properties, required: fields };
}

$("#eval-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#form-error").hidden = true;
  $("#criteria").removeAttribute("aria-invalid");
  $("#criteria-error").textContent = "";
  let criteria = $("#criteria").value;
  // Text that is not JSON is sent as it is: the API names what is wrong, as for any field.
  try { criteria = JSON.parse(criteria); } catch { /* sent as text */ }
  try {
    const config = $("#kind").value === "custom"
      ? { type: "custom", item_schema: itemSchema($("#fields").value), include_sample_schema: true }
      : { type: "stored_completions", metadata: metadataFilter($("#filter").value) };
    const body = { name: $("#name").value.trim() || undefined, data_source_config: config, testing_criteria: criteria };
    const created = await api("/v1/evals", { method: "POST", json: body });
    location.assign(`${ROOT}/evals/${created.id}`);
  } catch (err) {
    if ((err.param || "").startsWith("testing_criteria")) {
      $("#criteria").setAttribute("aria-invalid", "true");
      $("#criteria-error").textContent = err.message;
      $("#criteria").focus();
    }
    showError("#form-error", err);
  }
});

listEvals().catch((err) => showError("#form-error", err));
