// edgecap's page: pick an image, stream its caption from POST /v1/stream, keep a history.
// Plain JavaScript, no build step; every request goes to this page's own origin.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY_KEY = "edgecap.history";
const KEY_KEY = "edgecap.apiKey";
const HISTORY_SIZE = 12;
const STATUS_EVERY_MS = 5000;
const JSON_SCHEMA = {
  type: "object",
  properties: {
    caption: { type: "string" },
    objects: { type: "array", items: { type: "string" } },
    text: { type: "string" },
  },
  required: ["caption", "objects", "text"],
};
// name -> [label, prompt (null: the server's default prompt), JSON schema or null]
const PRESETS = {
  short: ["Short caption", "Write a one-sentence caption for this image.", null],
  rich: ["Rich caption", null, null],
  alt: ["Alt text", "Write alt text for this image for someone who cannot see it: one or two plain sentences.", null],
  tags: ["Tags / keywords", "List 5 to 10 keywords for this image, separated by commas.", null],
  ocr: ["What is written", "What is written in this image? Transcribe all visible text exactly. Answer 'No text' if there is none.", null],
  json: ["JSON with a schema", "Describe this image as JSON: a short caption, the main objects, and any visible text.", JSON_SCHEMA],
};

const state = { defaults: null, image: null, running: null, lastText: "", idleTimer: 0, stream: null };

// ---------------------------------------------------------------- requests

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY_KEY);
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(false), cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw apiError(body, response.status);
  return body;
}

function apiError(body, status) {
  const error = (body && body.errors && body.errors[0]) || {};
  const problem = new Error(error.message || `The server answered ${status}.`);
  problem.code = error.code;
  problem.status = status;
  return problem;
}

function newUUID() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// ---------------------------------------------------------------- the image

async function useImage(file) {
  if (!file) return;
  clearAnswer();
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = { file, url: URL.createObjectURL(file), width: 0, height: 0 };
  const img = $("preview-img");
  img.src = state.image.url;
  $("preview").hidden = false;
  $("preview-info").textContent = `${file.name || "image"}, ${kib(file.size)}`;
  $("caption").disabled = false;
  touch();
}

function kib(bytes) {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

async function showTokens() {
  const image = state.image;
  if (!image || !image.width) return;
  const query = new URLSearchParams({ width: image.width, height: image.height, maxPixels: maxPixels() });
  const size = `${image.file.name || "image"}, ${kib(image.file.size)}, ${image.width}×${image.height}`;
  try {
    const budget = await getJSON("/v1/image-tokens?" + query);
    $("preview-info").textContent = `${size} → ${budget.width}×${budget.height}, ${budget.tokens} image tokens`;
  } catch (problem) {
    $("preview-info").textContent = `${size}: ${problem.message}`;
  }
}

function maxPixels() {
  const d = state.defaults;
  const tokens = Number($("budget").value) || d.maxPixels / d.pixelsPerToken;
  return Math.round(tokens) * d.pixelsPerToken;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("The browser could not read this file."));
    reader.readAsDataURL(file);
  });
}

async function startCamera() {
  try {
    const media = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    state.stream = media;
    $("video").srcObject = media;
    await $("video").play();
    $("camera-box").hidden = false;
  } catch (problem) {
    showError(`The camera is not available: ${problem.message}`);
  }
}

function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  $("video").srcObject = null;
  $("camera-box").hidden = true;
}

function snap() {
  const video = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    stopCamera();
    useImage(new File([blob], "camera.jpg", { type: "image/jpeg" }));
  }, "image/jpeg", 0.92);
}

// ---------------------------------------------------------------- captioning

function buildTask(image) {
  const d = state.defaults;
  const kiosk = d.kiosk.enabled;
  const task = {
    taskType: "caption",
    taskUUID: newUUID(),
    inputs: { image },
    prompt: kiosk ? d.kiosk.prompt : $("prompt").value.trim() || d.defaultPrompt,
  };
  if (kiosk) return task;
  task.maxPixels = maxPixels();
  task.maxTokens = Number($("max-tokens").value) || d.maxTokens;
  if (!$("schema-box").hidden) {
    try {
      task.jsonSchema = JSON.parse($("schema").value);
    } catch (problem) {
      throw new Error(`The JSON schema is not valid JSON: ${problem.message}`);
    }
  }
  return task;
}

async function caption() {
  if (!state.image || state.running) return;
  clearAnswer();
  const controller = new AbortController();
  state.running = controller;
  setBusy(true);
  const prompt = state.defaults.kiosk.enabled ? state.defaults.kiosk.prompt : $("prompt").value;
  try {
    const task = buildTask(await readAsDataURL(state.image.file));
    const response = await fetch("/v1/stream", {
      method: "POST", headers: headers(true), body: JSON.stringify(task), signal: controller.signal,
    });
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      throw apiError(await response.json().catch(() => ({})), response.status);
    }
    await readEvents(response.body, { piece: onPiece, result: onResult, error: onStreamError });
    if (state.lastText) remember(prompt, state.lastText);
  } catch (problem) {
    if (problem.name === "AbortError") {
      $("timings").textContent = "Stopped.";
    } else {
      if (problem.status === 401) askForKey(problem.message);
      showError(problem.message);
    }
  } finally {
    state.running = null;
    setBusy(false);
    touch();
    refreshStatus();
  }
}

async function readEvents(body, handlers) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1];
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      if (name && data && handlers[name]) handlers[name](JSON.parse(data));
    }
  }
}

function onPiece(event) {
  $("answer").append(event.text); // one text node per piece: screen readers hear it grow
  touch();
}

function onResult(item) {
  state.lastText = item.text;
  $("answer").textContent = item.text;
  $("copy").disabled = false;
  if (!item.timings) return;
  const stages = Object.entries(item.timings).map(([stage, s]) => `${stage.replace("_", " ")} ${s.toFixed(2)} s`);
  $("timings").textContent = `${stages.join(" · ")} · ${item.imageTokens} image tokens · ${item.generatedTokens} generated (${item.finishReason})`;
}

function onStreamError(error) {
  showError(error.message);
}

function setBusy(busy) {
  $("caption").disabled = busy || !state.image;
  $("stop").disabled = !busy;
}

function stop() {
  if (state.running) state.running.abort();
}

function clearAnswer() {
  state.lastText = "";
  $("answer").textContent = "";
  $("timings").textContent = "";
  $("error").hidden = true;
  $("copy").disabled = true;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function copy() {
  try {
    await navigator.clipboard.writeText(state.lastText);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("answer"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("timings").textContent = "Copied to the clipboard.";
}

// ---------------------------------------------------------------- history (this browser only)

function history() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_KEY)) || [];
  } catch {
    return [];
  }
}

function remember(prompt, text) {
  if (state.defaults.kiosk.enabled) return; // the next visitor must not see it
  const entry = { thumb: thumbnail($("preview-img")), prompt, text, at: Date.now() };
  let entries = [entry, ...history()].slice(0, HISTORY_SIZE);
  while (entries.length) {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(entries));
      break;
    } catch {
      entries = entries.slice(0, -1); // storage full: drop the oldest
    }
  }
  renderHistory();
}

function thumbnail(img) {
  if (!img.naturalWidth) return "";
  const scale = 96 / Math.max(img.naturalWidth, img.naturalHeight);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.7);
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren(...history().map((entry) => {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.alt = "";
    if (entry.thumb.startsWith("data:image/")) img.src = entry.thumb;
    const words = document.createElement("div");
    const prompt = document.createElement("p");
    prompt.className = "prompt";
    prompt.textContent = entry.prompt;
    const text = document.createElement("p");
    text.textContent = entry.text;
    words.append(prompt, text);
    item.append(img, words);
    return item;
  }));
}

// ---------------------------------------------------------------- status strip, key, kiosk

async function refreshStatus() {
  const d = state.defaults;
  if (document.hidden || d.kiosk.enabled || (d.keyRequired && !sessionStorage.getItem(KEY_KEY))) return;
  try {
    const s = await getJSON("/v1/status");
    const model = s.model.id || `none (${s.model.problem})`;
    $("st-model").textContent = `Model: ${model}` + (s.model.randomWeights ? " — random weights, captions are noise" : "");
    $("st-model").classList.toggle("warn", Boolean(s.model.randomWeights));
    $("st-backend").textContent = s.backend
      ? `Backend: ${s.backend.name}${s.backend.gpuOffload ? " (GPU offload)" : ""}`
      : "Backend: loading…";
    $("st-queue").textContent = `Queue: ${s.queue.waiting} waiting, ${s.queue.running} running`;
  } catch (problem) {
    if (problem.status === 401) askForKey(problem.message);
    $("st-queue").textContent = `Status: ${problem.message}`;
  }
}

function askForKey(problem) {
  sessionStorage.removeItem(KEY_KEY);
  if (problem) $("key-problem").textContent = problem;
  if (!$("key-dialog").open) $("key-dialog").showModal();
}

function saveKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_KEY, $("key").value.trim());
  $("key").value = "";
  $("key-dialog").close();
  refreshStatus();
}

function touch() {
  const kiosk = state.defaults && state.defaults.kiosk;
  if (!kiosk || !kiosk.enabled) return;
  clearTimeout(state.idleTimer);
  state.idleTimer = setTimeout(resetScreen, kiosk.idleSeconds * 1000);
}

function resetScreen() {
  if (state.running) return touch(); // never clear a caption that is still coming
  stopCamera();
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = null;
  $("file").value = "";
  $("preview-img").removeAttribute("src");
  $("preview").hidden = true;
  clearAnswer();
  setBusy(false);
}

// ---------------------------------------------------------------- wiring

function setUpControls(d) {
  for (const [name, [label]] of Object.entries(PRESETS)) $("preset").add(new Option(label, name));
  $("preset").value = "rich";
  applyPreset();
  $("budget").value = Math.round(d.maxPixels / d.pixelsPerToken);
  $("budget").max = Math.floor(d.maxPixelsCeiling / d.pixelsPerToken);
  $("max-tokens").value = d.maxTokens;
  $("max-tokens").max = d.maxTokensLimit;
  $("prompt").maxLength = d.maxPromptChars;
}

function applyPreset() {
  const [, prompt, schema] = PRESETS[$("preset").value];
  $("prompt").value = prompt || state.defaults.defaultPrompt;
  $("schema-box").hidden = !schema;
  if (schema) $("schema").value = JSON.stringify(schema, null, 2);
}

function wire() {
  $("file").addEventListener("change", () => useImage($("file").files[0]));
  $("preview-img").addEventListener("load", () => {
    Object.assign(state.image, { width: $("preview-img").naturalWidth, height: $("preview-img").naturalHeight });
    showTokens();
  });
  $("preview-img").addEventListener("error", () => {
    if (state.image) $("preview-info").textContent += " — the browser cannot show this image";
  });
  $("budget").addEventListener("change", showTokens);
  $("preset").addEventListener("change", applyPreset);
  $("caption").addEventListener("click", caption);
  $("stop").addEventListener("click", stop);
  $("copy").addEventListener("click", copy);
  $("reset").addEventListener("click", resetScreen);
  $("camera").addEventListener("click", startCamera);
  $("snap").addEventListener("click", snap);
  $("clear-history").addEventListener("click", () => { localStorage.removeItem(HISTORY_KEY); renderHistory(); });
  $("key-form").addEventListener("submit", saveKey);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) caption(); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    useImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = Array.from(e.clipboardData.files).find((f) => f.type.startsWith("image/"));
    if (file) useImage(file);
  });
  for (const kind of ["pointerdown", "keydown", "touchstart"]) document.addEventListener(kind, touch);
}

async function start() {
  wire();
  try {
    state.defaults = await getJSON("/v1/defaults");
  } catch (problem) {
    showError(`The server did not answer: ${problem.message}`);
    return;
  }
  const d = state.defaults;
  document.body.classList.toggle("kiosk", d.kiosk.enabled);
  setUpControls(d);
  $("camera").hidden = !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  if (d.kiosk.enabled) $("camera").textContent = "Take photo";
  renderHistory();
  if (d.keyRequired && !sessionStorage.getItem(KEY_KEY)) askForKey();
  refreshStatus();
  setInterval(refreshStatus, STATUS_EVERY_MS);
}

start();
