// The Studio's shared code: the API client, a server-sent-events reader, and DOM helpers.
// Everything the pages show comes from the server's public HTTP API through `api()`; user data
// and model output only ever go into the page as text (textContent), never as HTML.

const KEY_STORAGE = "tuneforge.apiKey";
export const ROOT = "/studio";

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

function headers(extra = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// fetch() the API; JSON in and out. Errors become ApiError with OpenAI's message/param/code.
export async function api(path, { method = "GET", json, form, signal, raw = false, extraHeaders } = {}) {
  const init = { method, headers: headers(extraHeaders), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: "The server cannot be reached: is `tuneforge serve` still running?" });
  }
  if (response.status === 401) askForKey();
  if (!response.ok) {
    let error = { message: `HTTP ${response.status}` };
    try { error = (await response.json()).error || error; } catch { /* not JSON */ }
    throw new ApiError(response.status, error);
  }
  return raw ? response : response.json();
}

// Parse a text/event-stream body into {id, event, data, retry} frames (CRLF-safe).
export async function* sseFrames(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const frame = { id: null, event: "message", data: "", retry: null };
        let hasData = false;
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;  // comments are heartbeats
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") { frame.data += (hasData ? "\n" : "") + value; hasData = true; }
          else if (field === "id") frame.id = value;
          else if (field === "event") frame.event = value;
          else if (field === "retry") frame.retry = Number(value);
        }
        if (hasData || frame.retry !== null) yield frame;
      }
      if (signal && signal.aborted) return;
    }
  } finally {
    reader.releaseLock();
  }
}

// Follow a job's event stream, reconnecting with Last-Event-ID until the job is finished.
// fetch() rather than EventSource, so that the API key travels in a header, not the URL.
export function followJobEvents(jobId, { onEvent, onStatus, onConnection }) {
  const controller = new AbortController();
  let lastId = null;
  let retry = 2000;
  let finished = false;
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?stream=true`;
  (async () => {
    let attempt = 0;
    while (!controller.signal.aborted && !finished) {
      try {
        const extraHeaders = lastId ? { "Last-Event-ID": lastId } : {};
        const response = await api(path, { raw: true, signal: controller.signal, extraHeaders });
        if (attempt > 0) onConnection("reconnected");
        attempt = 0;
        for await (const frame of sseFrames(response, controller.signal)) {
          if (frame.retry) retry = frame.retry;
          if (!frame.data) continue;
          const data = JSON.parse(frame.data);
          if (frame.event === "status") {
            onStatus(data);
            if (["succeeded", "failed", "cancelled"].includes(data.status)) finished = true;
          } else {
            if (frame.id) lastId = frame.id;
            onEvent(data);
          }
        }
        if (finished) return;  // the server ends the stream after the final status
      } catch (err) {
        if (err.name === "AbortError") return;
        if (err.status && err.status !== 503 && err.status >= 400 && err.status < 500) {
          onConnection(`stopped: ${err.message}`);
          return;
        }
      }
      attempt += 1;
      onConnection(`Connection to the server lost; reconnecting (attempt ${attempt})…`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(retry * attempt, 15000)));
    }
  })();
  return () => controller.abort();
}

// Build an element: el("td", {class: "num"}, "text", child). Strings become text nodes.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector) { return document.querySelector(selector); }

export function replace(target, ...children) {
  const node = typeof target === "string" ? $(target) : target;
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  node.removeAttribute("aria-busy");
  return node;
}

let noticeTimer = null;
export function notice(message) {
  const node = $("#notice");
  node.textContent = message;
  clearTimeout(noticeTimer);
  if (message) noticeTimer = setTimeout(() => { node.textContent = ""; }, 8000);
}

export function showError(target, err) {
  const node = typeof target === "string" ? $(target) : target;
  node.hidden = false;
  node.textContent = err.message || String(err);
}

export function table(columns, rows) {
  const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.map((row) => el("tr", {}, columns.map((c) => {
    const value = c.value(row);
    return el("td", { class: c.num ? "num" : null, "data-label": c.label || null }, value instanceof Node ? value : fmt(value));
  })));
  return el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return Number(value.toPrecision(digits)).toString();
  }
  return String(value);
}

export function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

export function badge(status) {
  return el("span", { class: `badge ${status}` }, status.replace("_", " "));
}

export function link(href, text) { return el("a", { href }, text); }

export function jobLink(job) { return link(`${ROOT}/jobs/${job.id}`, job.id); }

export function params() { return new URLSearchParams(location.search); }

export function pageData(name) { return document.body.dataset[name]; }

// Save a response body as a file (downloads go through fetch so the key stays in a header).
export async function download(path, fallbackName) {
  notice(`Preparing ${fallbackName}…`);
  const response = await api(path, { raw: true });
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const a = el("a", { href: URL.createObjectURL(blob), download: match ? match[1] : fallbackName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  notice(`Downloaded ${a.download}.`);
}

export async function baseModels() {
  const models = (await api("/v1/models")).data;
  return models.filter((m) => !m.id.startsWith("ft:") && m.owned_by !== "user");
}

export async function fineTunedModels() {
  const models = (await api("/v1/models")).data;
  return models.filter((m) => m.id.startsWith("ft:") || m.owned_by === "user");
}

export function askForKey() {
  const dialog = $("#key-dialog");
  if (!dialog || dialog.open) return;
  dialog.showModal();
}

function setUpKeyDialog() {
  const form = $("#key-form");
  if (form) {
    form.addEventListener("submit", () => {
      const value = $("#key-input").value.trim();
      if (value) {
        localStorage.setItem(KEY_STORAGE, value);
        location.reload();
      }
    });
  }
  const forget = $("#forget-key");
  if (forget) {
    forget.hidden = !localStorage.getItem(KEY_STORAGE);
    forget.addEventListener("click", () => {
      localStorage.removeItem(KEY_STORAGE);
      notice("API key forgotten.");
      forget.hidden = true;
    });
  }
}

setUpKeyDialog();
