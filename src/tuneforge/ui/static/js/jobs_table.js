// The jobs table of the home and jobs pages.
import { api, badge, el, jobLink, link, replace, ROOT, table, when } from "./lib.js";

export async function renderJobs(target) {
  const jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
  if (!jobs.length) {
    replace(target, el("p", {}, "No jobs yet. ", link(`${ROOT}/jobs/new`, "Start one"), " after you ",
      link(`${ROOT}/data`, "upload data"), "."));
    return;
  }
  replace(target, table([
    { label: "Job", value: jobLink },
    { label: "Status", value: (j) => badge(j.status) },
    { label: "Method", value: (j) => (j.method && j.method.type) || "supervised" },
    { label: "Base model", value: (j) => j.model },
    { label: "Fine-tuned model", value: (j) => j.fine_tuned_model || "–" },
    { label: "Created", value: (j) => when(j.created_at) },
  ], jobs));
}
