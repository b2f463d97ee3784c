// Compare: pick the test and training files, fine-tuned models and an optional grader; past comparisons.
import { $, api, badge, el, fineTunedModels, params, replace, ROOT, showError, table, when } from "./lib.js";

async function main() {
  const q = params();
  const [files, models, comparisons] = await Promise.all([api("/v1/files"), fineTunedModels(), api("/v1/tuneforge/comparisons")]);
  const options = (selected) => files.data.map((f) => el("option", { value: f.id, selected: f.id === selected }, `${f.filename} (${f.id})`));
  replace("#test_file", options(q.get("test_file")));
  replace("#training_file", options(q.get("training_file")));
  const wanted = q.getAll("model");
  replace("#models", models.length
    ? models.map((m, i) => el("div", {}, el("label", { for: `m-${i}` },
      el("input", { type: "checkbox", id: `m-${i}`, value: m.id, checked: wanted.includes(m.id) }), " ", m.id)))
    : el("p", { class: "muted" }, "No fine-tuned models yet: the baselines alone can still be compared."));
  replace("#comparisons", comparisons.data.length ? table([
    { label: "Comparison", value: (c) => el("a", { href: `${ROOT}/compare/${c.id}` }, c.id) },
    { label: "Status", value: (c) => badge(c.status) },
    { label: "Test file", value: (c) => c.request.test_filename || c.request.test_file },
    { label: "Models", value: (c) => (c.request.models || []).join(", ") || "baselines only" },
    { label: "Created", value: (c) => when(c.created_at) },
  ], comparisons.data) : el("p", { class: "muted" }, "None yet."));
  $("#compare-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#form-error").hidden = true;
    $("#grader").removeAttribute("aria-invalid");
    $("#grader-error").textContent = "";
    const body = {
      test_file: $("#test_file").value,
      training_file: $("#training_file").value,
      models: [...document.querySelectorAll("#models input:checked")].map((c) => c.value),
      baselines: $("#baselines").checked,
    };
    const limit = $("#limit").value.trim();
    if (limit) body.limit = Number(limit);
    const grader = $("#grader").value.trim();
    // Text that is not JSON is sent as it is: the API names what is wrong, as for any field.
    if (grader) { try { body.grader = JSON.parse(grader); } catch { body.grader = grader; } }
    try {
      const created = await api("/v1/tuneforge/comparisons", { method: "POST", json: body });
      location.assign(`${ROOT}/compare/${created.id}`);
    } catch (err) {
      if ((err.param || "").startsWith("grader")) {
        $("#grader").setAttribute("aria-invalid", "true");
        $("#grader-error").textContent = err.message;
        $("#grader").focus();
      }
      showError("#form-error", err);
    }
  });
}

main().catch((err) => showError("#form-error", err));
