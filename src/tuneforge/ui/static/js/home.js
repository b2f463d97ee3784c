import { $, showError } from "./lib.js";
import { renderJobs } from "./jobs_table.js";

renderJobs($("#jobs")).catch((err) => showError("#jobs", err));
