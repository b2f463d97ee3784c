// Models: what the server answers for; chat, download or delete each.
import { $, api, download, el, notice, replace, ROOT, showError, table, when } from "./lib.js";

async function render() {
  const models = (await api("/v1/models")).data;
  const fine = (m) => m.id.startsWith("ft:") || m.owned_by === "user";
  replace("#models", table([
    { label: "Model", value: (m) => el("code", {}, m.id) },
    { label: "Kind", value: (m) => (m.id.startsWith("ft:") ? "fine-tuned (job)" : m.owned_by === "user" ? "fine-tuned (tuneforge train)" : "base") },
    { label: "Created", value: (m) => when(m.created) },
    { label: "Actions", value: (m) => el("div", { class: "row" },
      el("a", { class: "button secondary", href: `${ROOT}/playground?model=${encodeURIComponent(m.id)}` }, "Chat"),
      fine(m) ? el("button", { type: "button", class: "secondary", "aria-label": `Download the adapter of ${m.id}`,
        onclick: () => download(`/v1/models/${encodeURIComponent(m.id)}/content?format=adapter`, "adapter.zip").catch((e) => notice(e.message)) }, "Adapter (.zip)") : null,
      fine(m) ? el("button", { type: "button", class: "secondary", "aria-label": `Download ${m.id} merged into its base`,
        onclick: () => download(`/v1/models/${encodeURIComponent(m.id)}/content?format=merged`, "merged.zip").catch((e) => notice(e.message)) }, "Merged model (.zip)") : null,
      m.id.startsWith("ft:") ? el("button", { type: "button", class: "danger", "aria-label": `Delete ${m.id}`,
        onclick: async () => {
          if (!confirm(`Delete ${m.id}? The run directory stays on disk.`)) return;
          try { await api(`/v1/models/${encodeURIComponent(m.id)}`, { method: "DELETE" }); notice(`Deleted ${m.id}.`); render(); }
          catch (err) { notice(err.message); }
        } }, "Delete") : null) },
  ], models));
}

render().catch((err) => showError("#models", err));
