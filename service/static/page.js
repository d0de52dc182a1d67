// The page at GET /: send an image to /detect (and /classify when a classifier is served), draw the answer.
// Plain script, no build step, no third-party code; every URL is relative, so it works behind a path prefix.
"use strict";

// The colours of detection/annotate.py's PALETTE, by label modulo its length (tests/test_page.py checks they match),
// so a class has the same colour here as in /detect/annotated and `python -m detection.predict --save-annotated`.
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
const MAX_RETRIES = 5; // 503 with Retry-After (queue full, warming up): retried this many times, then reported
const LABEL_PX = 13; // label font size on screen, whatever the image's size
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const page = { file: null, imageUrl: null, classifier: false, controller: null, answer: null };

function setState(state, message) {
  document.body.dataset.state = state; // "idle", "busy", "done" or "error": what tests and styles wait on
  const status = $("status");
  status.textContent = message;
  status.className = state;
}

function errorMessage(status, body, retryAfter) {
  const detail = typeof body?.detail === "string" ? body.detail : JSON.stringify(body?.detail ?? body);
  const request = body?.request_id ? ` (request ${body.request_id})` : "";
  switch (status) {
    case 401:
      return `This server needs an API key: enter it above. (${detail})`;
    case 413:
      return `Too large for this server: ${detail}. Send a smaller image.${request}`;
    case 415:
      return `Not an image type the server accepts: ${detail}. Use JPEG, PNG, WebP, BMP, GIF or TIFF.${request}`;
    case 503:
      return retryAfter === null
        ? `Unavailable: ${detail}.${request}`
        : `The service is busy or warming up (${detail}); still unavailable after ${MAX_RETRIES} tries, try again later.${request}`;
    default:
      return `Error ${status}: ${detail}${request}`;
  }
}

async function post(path, params) {
  // One request with the chosen file; retries 503 answers that carry Retry-After (the server says when).
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    form.append("file", page.file, page.file.name);
    const response = await fetch(`${path}?${params}`, {
      method: "POST", body: form, headers, signal: page.controller.signal,
    });
    const body = await response.json().catch(() => null);
    if (response.ok) return body;
    const retryAfter = response.headers.get("Retry-After");
    if (response.status === 503 && retryAfter !== null && attempt < MAX_RETRIES) {
      const seconds = Math.max(1, Number(retryAfter) || 1);
      setState("busy", `The service is busy or warming up; retrying in ${seconds} s (try ${attempt + 2} of ${MAX_RETRIES + 1})…`);
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      continue;
    }
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("api-key").focus();
    }
    throw new Error(errorMessage(response.status, body, retryAfter));
  }
}

function detectParams() {
  const params = new URLSearchParams({ score_threshold: $("threshold").value });
  for (const option of $("classes").selectedOptions) params.append("classes", option.value);
  return params;
}

async function run() {
  if (!page.file) return;
  page.controller?.abort(); // a newer request replaces one still running
  page.controller = new AbortController();
  const controller = page.controller;
  setState("busy", `Detecting objects in ${page.file.name}…`);
  const started = performance.now();
  try {
    const [detect, classify] = await Promise.all([
      post("detect", detectParams()),
      page.classifier ? post("classify", new URLSearchParams({ top_k: "5" })) : Promise.resolve(null),
    ]);
    const roundTrip = performance.now() - started;
    page.answer = { detect, classify };
    render(detect, classify, roundTrip);
    const count = detect.detections.length;
    setState("done", `${count} detection${count === 1 ? "" : "s"} at score ≥ ${$("threshold").value}.`);
  } catch (error) {
    if (controller.signal.aborted) return;
    const message = error instanceof TypeError ? `Cannot reach the server: ${error.message}` : error.message;
    setState("error", message);
  }
}

function render(detect, classify, roundTrip) {
  const { width, height } = detect.image;
  $("figure").hidden = false;
  const stage = $("stage");
  stage.style.aspectRatio = `${width} / ${height}`;
  stage.style.width = `min(100%, calc(75vh * ${width} / ${height}))`; // the whole image in view, undistorted
  $("caption").textContent = `${page.file.name}: ${width}×${height} px, model ${detect.model.name} (${detect.model.version})`;
  drawBoxes(detect.detections, width, height);
  listDetections(detect.detections);
  listTop5(classify);
  fillTiming(detect, classify, roundTrip);
  $("raw").textContent = JSON.stringify(classify ? { detect, classify } : { detect }, null, 2);
}

function textColour(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#000" : "#fff";
}

function drawBoxes(detections, width, height) {
  // The SVG's user units are the image's pixels (the JSON's), so each rect is the box as answered.
  const svg = $("boxes");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const boxes = document.createElementNS(SVG_NS, "g");
  const labels = document.createElementNS(SVG_NS, "g");
  svg.replaceChildren(boxes, labels); // every label above every box
  const unitsPerPx = width / Math.max(1, svg.getBoundingClientRect().width);
  const fontSize = LABEL_PX * unitsPerPx;
  detections.forEach((detection, index) => {
    const [x1, y1, x2, y2] = detection.box;
    const rect = document.createElementNS(SVG_NS, "rect");
    Object.entries({
      class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: PALETTE[detection.label % PALETTE.length],
      "data-index": index, "data-name": detection.name, "data-label": detection.label,
      "data-score": detection.score, "data-box": JSON.stringify(detection.box),
    }).forEach(([name, value]) => rect.setAttribute(name, value));
    boxes.append(rect);
  });
  // Lowest score first, so where labels overlap the higher-scoring one is on top (as detection/annotate.py).
  [...detections].reverse().forEach((detection) => {
    const [x1, y1] = detection.box;
    const colour = PALETTE[detection.label % PALETTE.length];
    const group = document.createElementNS(SVG_NS, "g");
    const background = document.createElementNS(SVG_NS, "rect");
    const text = document.createElementNS(SVG_NS, "text");
    text.textContent = `${detection.name} ${detection.score.toFixed(2)}`;
    text.setAttribute("font-size", fontSize);
    text.setAttribute("fill", textColour(colour));
    background.setAttribute("fill", colour);
    group.append(background, text);
    labels.append(group);
    // Above the box when there is room, else inside its top edge; never past the right edge.
    const textWidth = text.getComputedTextLength();
    const pad = fontSize * 0.25;
    const labelHeight = fontSize + 2 * pad;
    const top = y1 - labelHeight >= 0 ? y1 - labelHeight : y1;
    const left = Math.min(x1, Math.max(0, width - textWidth - 2 * pad));
    Object.entries({ x: left, y: top, width: textWidth + 2 * pad, height: labelHeight })
      .forEach(([name, value]) => background.setAttribute(name, value));
    text.setAttribute("x", left + pad);
    text.setAttribute("y", top + pad + fontSize * 0.8);
  });
}

function listDetections(detections) {
  $("detections").replaceChildren(...detections.map((detection) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[detection.label % PALETTE.length];
    item.append(swatch, `${detection.name} ${detection.score.toFixed(3)} [${detection.box.map((v) => v.toFixed(1)).join(", ")}]`);
    return item;
  }));
}

function listTop5(classify) {
  $("classifier-panel").hidden = !classify;
  if (!classify) return;
  $("top5").replaceChildren(...classify.predictions.map((prediction) => {
    const item = document.createElement("li");
    const bar = document.createElement("meter");
    bar.min = 0; bar.max = 1; bar.value = prediction.probability;
    item.append(`${prediction.name} ${(100 * prediction.probability).toFixed(1)}% `, bar);
    return item;
  }));
}

function fillTiming(detect, classify, roundTrip) {
  const rows = [["detect", detect.timing_ms]];
  if (classify) rows.push(["classify", classify.timing_ms]);
  const body = $("timing").tBodies[0];
  const header = ["", "decode", "queue", "inference", "total", "batch"];
  body.replaceChildren(
    row(header, "th"),
    ...rows.map(([name, t]) => row([name, t.decode, t.queue, t.inference, t.total, t.batch_size].map(String), "td")),
    row(["round trip", "", "", "", roundTrip.toFixed(1), ""], "td"),
  );
}

function row(cells, tag) {
  const tr = document.createElement("tr");
  tr.append(...cells.map((value) => Object.assign(document.createElement(tag), { textContent: value })));
  return tr;
}

function choose(file) {
  if (!file) return;
  page.file = file;
  if (page.imageUrl) URL.revokeObjectURL(page.imageUrl);
  page.imageUrl = URL.createObjectURL(file);
  $("image").src = page.imageUrl;
  run();
}

async function loadModels() {
  try {
    const response = await fetch("models");
    if (!response.ok) throw new Error(errorMessage(response.status, await response.json().catch(() => null), null));
    const { models } = await response.json();
    // The default detector: the one /detect runs when no ?model= is given, so its classes are the ones accepted.
    const detector = models.find((model) => model.role === "detector" && model.default);
    page.classifier = models.some((model) => model.role === "classifier");
    $("models").textContent = models.map((model) => `${model.role}: ${model.name}${model.demo ? " (demo)" : ""}`).join(" · ");
    $("models").title = models.map((model) => model.note).join("\n");
    $("demo-note").hidden = !models.some((model) => model.demo);
    $("classes").replaceChildren(...(detector?.class_names ?? []).map((name) => new Option(name, name)));
    if (!detector) setState("error", "No detector is served here (DETECTOR_CHECKPOINT is empty).");
  } catch (error) {
    $("models").textContent = `Cannot list the models: ${error.message}`;
  }
}

function setUp() {
  setState("idle", "Choose or drop an image.");
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", () => { $("threshold-value").value = Number($("threshold").value).toFixed(2); });
  $("threshold").addEventListener("change", run);
  $("classes").addEventListener("change", run);
  $("api-key").addEventListener("change", run);
  // Labels keep their on-screen size when the window (and so the drawn image) changes size.
  window.addEventListener("resize", () => { if (page.answer) drawBoxes(page.answer.detect.detections, page.answer.detect.image.width, page.answer.detect.image.height); });
  loadModels();
}

window.resdetPalette = PALETTE;
setUp();
