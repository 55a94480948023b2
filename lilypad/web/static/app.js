// The dashboard's little JavaScript: post a module's form, follow a job's event stream, show
// its outputs. Plain browser APIs; nothing to build.
"use strict";

const DONE = new Set(["succeeded", "failed", "canceled"]);
const MEDIA = { png: "image", jpg: "image", jpeg: "image", webp: "image", gif: "image",
  apng: "image", mp4: "video", webm: "video", txt: "text", json: "text" };

function mediaKind(path) {
  const dot = path.lastIndexOf(".");
  return dot < 0 ? "file" : (MEDIA[path.slice(dot + 1).toLowerCase()] || "file");
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------------------ the form
function typed(field) {
  const kind = field.dataset.type;
  if (kind === "boolean") return field.checked;
  if (field.value === "") return undefined;
  if (kind === "integer") return Number.parseInt(field.value, 10);
  if (kind === "number") return Number(field.value);
  return field.value;
}

async function runForm(event) {
  event.preventDefault();
  const form = event.target;
  const error = document.getElementById("form-error");
  const button = document.getElementById("run");
  error.hidden = true;
  const body = new FormData();
  const input = {};
  const options = {};
  body.append("version", form.dataset.ref);
  for (const field of form.querySelectorAll("input, select, textarea")) {
    if (!field.name) continue;
    if (field.dataset.option) { options[field.name] = field.value; continue; }
    if (field.dataset.type === "file") {
      if (field.files.length) body.append(field.name, field.files[0], field.files[0].name);
      continue;
    }
    const value = typed(field);
    if (value !== undefined) input[field.name] = value;
  }
  body.append("input", JSON.stringify(input));
  body.append("options", JSON.stringify(options));
  button.disabled = true;
  button.textContent = "Posting the offer…";
  try {
    const answer = await fetch("/v1/predictions", {
      method: "POST", body, headers: { "X-Lilypad-Csrf": "1" }, credentials: "same-origin",
    });
    const data = await answer.json();
    if (answer.status !== 201) throw new Error(data.detail + (data.hint ? ` (${data.hint})` : ""));
    window.location.assign(data.urls.web);
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
    button.disabled = false;
    button.textContent = "Run";
  }
}

// ------------------------------------------------------------------------------ a job
function showOutputs(job) {
  const box = document.getElementById("outputs");
  if (!job.output) return;
  box.replaceChildren();
  for (const file of job.output.files) {
    const figure = el("figure", { class: "output", "data-file": file });
    const url = job.output.urls[file];
    const kind = mediaKind(file);
    if (kind === "image") figure.append(el("img", { src: url, alt: file }));
    else if (kind === "video") figure.append(el("video", { src: url, controls: "", loop: "", muted: "" }));
    else if (kind === "text") figure.append(el("pre", { "data-src": job.output.local_urls[file] }));
    const caption = el("figcaption");
    caption.append(el("a", { href: url }, file));
    figure.append(caption);
    box.append(figure);
  }
  const link = el("p");
  link.append(el("a", { id: "gateway", href: job.output.gateway_url }, "the result on the gateway"));
  box.append(link);
  loadTexts();
}

function showFacts(job) {
  const set = (id, text) => { const node = document.getElementById(id); if (node) node.textContent = text; };
  const status = document.getElementById("status");
  status.textContent = job.status;
  status.className = `status-${job.status}`;
  document.getElementById("job").dataset.status = job.status;
  set("state", job.state);
  set("deal", job.deal_id || "–");
  set("provider", job.provider || "–");
  set("cid", (job.output && job.output.cid) || job.result_cid || "–");
  set("verified", job.verified || "–");
  set("txs", Object.entries(job.txs).map(([name, tx]) => `${name} ${tx.slice(0, 18)}…`).join("  "));
  if (job.logs) set("log", job.logs);
  const error = document.getElementById("error");
  error.hidden = !job.error;
  error.textContent = job.error || "";
}

function follow(section) {
  const id = section.dataset.id;
  const steps = document.getElementById("steps");
  const log = document.getElementById("log");
  const stream = new EventSource(`/v1/predictions/${id}/events`);
  steps.replaceChildren();
  log.textContent = "";
  stream.addEventListener("step", (event) => {
    const step = JSON.parse(event.data);
    steps.append(el("li", { "data-step": step.name }, step.text));
    document.getElementById("state").textContent = step.name;
  });
  stream.addEventListener("log", (event) => {
    log.textContent += JSON.parse(event.data).text + "\n";
  });
  stream.addEventListener("progress", (event) => {
    const { detail } = JSON.parse(event.data);
    document.getElementById("progress").hidden = false;
    const bar = document.getElementById("bar");
    bar.max = detail.total;
    bar.value = detail.done;
    document.getElementById("progress-text").textContent =
      `${detail.label || "step"} ${detail.done}/${detail.total}`;
  });
  stream.addEventListener("done", (event) => {
    stream.close();
    const job = JSON.parse(event.data);
    showFacts(job);
    showOutputs(job);
    document.getElementById("progress").hidden = true;
  });
}

function loadTexts() {
  for (const pre of document.querySelectorAll("pre[data-src]")) {
    fetch(pre.dataset.src, { credentials: "same-origin" })
      .then((answer) => answer.text())
      .then((text) => { pre.textContent = text; pre.removeAttribute("data-src"); });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("run-form");
  if (form) form.addEventListener("submit", runForm);
  const section = document.getElementById("job");
  if (section && !DONE.has(section.dataset.status)) follow(section);
  loadTexts();
});
