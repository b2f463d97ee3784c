// Data: drag-and-drop upload (CSV with a column-mapping step) and the files on the server.
import { $, api, el, fmt, notice, replace, ROOT, showError, table, when } from "./lib.js";

const input = $("#file-input");
const drop = $("#drop");
const button = $("#upload-btn");
let chosen = null;
let columns = null;

function parseCsvHeader(text) {
  const line = text.split(/\r?\n/, 1)[0] || "";
  const out = [];
  let cur = "", quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') { cur += '"'; i++; }
      else if (c === '"') quoted = false;
      else cur += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { out.push(cur.trim()); cur = ""; }
    else cur += c;
  }
  out.push(cur.trim());
  return out.filter(Boolean);
}

const KNOWN = [["prompt", "completion"], ["instruction", "output"], ["question", "answer"], ["input", "output"]];

function roleSelect(id, label, options, { multiple = false, optional = false, help = "" } = {}) {
  const select = el("select", { id, name: id, multiple, size: multiple ? Math.min(5, options.length) : null, "aria-describedby": `${id}-help` },
    optional ? el("option", { value: "" }, "(none)") : null,
    options.map((c) => el("option", { value: c }, c)));
  return el("div", { class: "field" }, el("label", { for: id }, label), select, el("small", { id: `${id}-help` }, help));
}

async function choose(file) {
  chosen = file;
  columns = null;
  $("#mapping").hidden = true;
  replace("#upload-result");
  button.disabled = !file;
  if (!file) return;
  notice(`Chosen: ${file.name} (${fmt(file.size)} bytes)`);
  if (file.name.toLowerCase().endsWith(".csv")) {
    const header = parseCsvHeader(await file.slice(0, 65536).text());
    const lower = header.map((h) => h.toLowerCase());
    if (KNOWN.some(([p, c]) => lower.includes(p) && lower.includes(c))) return;  // detected as is
    columns = header;
    replace("#mapping-fields",
      roleSelect("map-prompt", "Prompt column(s)", header, { multiple: true, help: "Several are joined in order." }),
      roleSelect("map-completion", "Answer column", header, { help: "What the model should reply." }),
      roleSelect("map-system", "System prompt column", header, { optional: true, help: "Optional." }));
    $("#map-prompt").options[0].selected = true;
    $("#map-completion").selectedIndex = Math.min(1, header.length - 1);
    $("#mapping").hidden = false;
  }
}

function columnMap() {
  if (!columns) return null;
  const prompt = [...$("#map-prompt").selectedOptions].map((o) => o.value);
  const completion = $("#map-completion").value;
  const system = $("#map-system").value;
  return `prompt=${prompt.join("+")},completion=${completion}` + (system ? `,system=${system}` : "");
}

input.addEventListener("change", () => choose(input.files[0] || null));
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});

$("#upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!chosen) return;
  const form = new FormData();
  form.append("file", chosen, chosen.name);
  form.append("purpose", "fine-tune");
  const mapping = columnMap();
  if (mapping) form.append("column_map", mapping);
  button.disabled = true;
  notice(`Uploading and checking ${chosen.name}…`);
  try {
    const file = await api("/v1/files", { method: "POST", form });
    location.assign(`${ROOT}/data/${file.id}`);
  } catch (err) {
    button.disabled = false;
    notice("");
    replace("#upload-result", el("div", { class: "error", role: "alert" },
      `${chosen.name} was not stored: ${err.message}`));
  }
});

async function renderFiles() {
  const files = (await api("/v1/files")).data;
  if (!files.length) { replace("#files", el("p", { class: "muted", id: "no-files" }, "No files yet.")); return; }
  replace("#files", table([
    // training data has a page (its validation and trained tokens); other files are listed
    { label: "File", value: (f) => (f.purpose === "fine-tune" ? el("a", { href: `${ROOT}/data/${f.id}` }, f.filename) : f.filename) },
    { label: "Purpose", value: (f) => f.purpose },
    { label: "Id", value: (f) => el("code", {}, f.id) },
    { label: "Bytes", value: (f) => f.bytes, num: true },
    { label: "Uploaded", value: (f) => when(f.created_at) },
    { label: "", value: (f) => el("button", { type: "button", class: "danger", "aria-label": `Delete ${f.filename}`,
      onclick: async () => {
        if (!confirm(`Delete ${f.filename}?`)) return;
        try { await api(`/v1/files/${f.id}`, { method: "DELETE" }); notice(`Deleted ${f.filename}.`); renderFiles(); }
        catch (err) { notice(err.message); }
      } }, "Delete") },
  ], files));
}

renderFiles().catch((err) => showError("#files", err));
