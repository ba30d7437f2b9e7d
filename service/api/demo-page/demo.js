// facesr demo page: sends one face to POST /v1/super-resolve and shows what comes back.
// Plain JavaScript, no framework and no build step; every URL is relative to the page.
"use strict";

// JSON with every feedback step, the landmarks and the two comparison images (16 x 16 input, bicubic).
const ENDPOINT = "v1/super-resolve?steps=true&landmarks=true&compare=true";
const OUTPUT_SIZE = 128; // landmarks are in output pixels, 0 <= x, y < 128
const OVERLAY_SCALE = 4; // canvas pixels per output pixel: sharp dots on the enlarged panel

// iBUG 68-point groups, drawn as lines: [first index, last index, closed].
const LANDMARK_GROUPS = [
  [0, 16, false], // jaw
  [17, 21, false], // brow on the image's left
  [22, 26, false], // brow on the image's right
  [27, 30, false], // nose bridge
  [31, 35, false], // nostrils
  [36, 41, true], // eye on the image's left
  [42, 47, true], // eye on the image's right
  [48, 59, true], // outer lip
  [60, 67, true], // inner lip
];

const byId = (id) => document.getElementById(id);
const ui = {
  drop: byId("drop"),
  file: byId("file"),
  fit: byId("fit"),
  keyRow: byId("key-row"),
  key: byId("api-key"),
  status: byId("status"),
  error: byId("error"),
  errorTitle: byId("error-title"),
  errorDetail: byId("error-detail"),
  result: byId("result"),
  lr: byId("lr-image"),
  bicubic: byId("bicubic-image"),
  sr: byId("sr-image"),
  step: byId("step"),
  stepLabel: byId("step-label"),
  landmarksImage: byId("landmarks-image"),
  canvas: byId("landmarks-canvas"),
  landmarkNote: byId("landmark-note"),
  timings: byId("timings").tBodies[0],
  meta: byId("meta"),
  inputRecord: byId("input-record"),
  warnings: byId("warnings"),
};

let lastFile = null; // re-sent when the fit option changes
let latestRequest = 0; // only the newest request's answer is shown (an older one may arrive later)
let stepImages = []; // data URLs of the per-step outputs, the last one is the result

// --- sending --------------------------------------------------------------------------------------

async function superResolve(file) {
  lastFile = file;
  const request = ++latestRequest;
  hideError();
  ui.status.textContent = `Sending ${file.name || "the image"}…`;
  const form = new FormData();
  form.append("image", file, file.name || "upload");
  const headers = { Accept: "application/json" };
  const key = ui.key.value.trim();
  if (key) headers["X-API-Key"] = key;
  const url = `${ENDPOINT}&fit=${encodeURIComponent(ui.fit.value)}`;

  let response;
  let body = null;
  try {
    response = await fetch(url, { method: "POST", headers, body: form });
    body = await response.json().catch(() => null); // a proxy's HTML error page is not JSON
  } catch (err) {
    if (request !== latestRequest) return; // a newer upload is on its way
    ui.status.textContent = "";
    showError("The service could not be reached", String(err));
    return;
  }
  if (request !== latestRequest) return; // a newer upload is on its way
  ui.status.textContent = "";
  if (!response.ok || body === null) {
    if (response.status === 401) showKeyField();
    // Errors are RFC 9457 problem documents: show their title and detail.
    const title = body?.title ?? `HTTP ${response.status} ${response.statusText}`.trim();
    showError(title, body?.detail ?? "");
    return;
  }
  showResult(body);
}

// --- showing the answer ---------------------------------------------------------------------------

function dataUrl(mediaType, base64) {
  return `data:${mediaType};base64,${base64}`;
}

function showResult(body) {
  const media = body.media_type;
  stepImages = (body.steps ?? [body.image]).map((step) => dataUrl(media, step));
  const final = dataUrl(media, body.image);

  // The two comparison images come with `compare` (older services answer null: the panels stay empty).
  setSource(ui.lr, body.lr_image && dataUrl("image/png", body.lr_image));
  setSource(ui.bicubic, body.bicubic_image && dataUrl(media, body.bicubic_image));
  ui.landmarksImage.src = final;

  ui.step.max = String(stepImages.length);
  ui.step.value = String(stepImages.length);
  ui.step.disabled = stepImages.length < 2;
  showStep();

  drawLandmarks(body.landmarks);
  // The serving model's landmark verdict; with `failed` the points are withheld and this says why.
  const quality = body.landmark_quality;
  ui.landmarkNote.textContent = quality ? `${quality.status}: ${quality.message}` : "";

  showTimings(body);
  showInputRecord(body.input, body.resized_from);
  ui.result.hidden = false;
}

function showStep() {
  const index = Number(ui.step.value);
  ui.sr.src = stepImages[index - 1];
  ui.stepLabel.textContent = `${index} of ${stepImages.length}`;
}

function drawLandmarks(points) {
  const canvas = ui.canvas;
  canvas.width = canvas.height = OUTPUT_SIZE * OVERLAY_SCALE;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(OVERLAY_SCALE, 0, 0, OVERLAY_SCALE, 0, 0); // draw in output pixels
  ctx.clearRect(0, 0, OUTPUT_SIZE, OUTPUT_SIZE);
  if (!points) return; // withheld: landmark_quality says why

  // A landmark (x, y) is a 0-based pixel position: its pixel's centre is at (x + 0.5, y + 0.5).
  const at = (p) => [p.x + 0.5, p.y + 0.5];
  ctx.lineWidth = 0.35;
  ctx.strokeStyle = "rgba(255, 255, 255, 0.75)";
  for (const [first, last, closed] of LANDMARK_GROUPS) {
    if (last >= points.length) continue;
    ctx.beginPath();
    ctx.moveTo(...at(points[first]));
    for (let i = first + 1; i <= last; i++) ctx.lineTo(...at(points[i]));
    if (closed) ctx.closePath();
    ctx.stroke();
  }
  for (const p of points) {
    const confidence = Math.min(1, Math.max(0, p.confidence));
    ctx.fillStyle = `hsl(${Math.round(120 * confidence)}, 100%, 45%)`;
    ctx.beginPath();
    ctx.arc(...at(p), 1.1, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function showTimings(body) {
  ui.timings.replaceChildren(
    ...Object.entries(body.timings_ms).map(([phase, ms]) => row(phase, `${ms.toFixed(1)} ms`)),
  );
  fillList(ui.meta, [
    ["model", body.model_id],
    ["batch size", body.batch_size ?? "–"],
    ["request id", body.request_id],
  ]);
}

function showInputRecord(input, resizedFrom) {
  if (!input) {
    fillList(ui.inputRecord, [["input", "not reported by this service version"]]);
    ui.warnings.replaceChildren();
    return;
  }
  const yesNo = (flag) => (flag ? "yes" : "no");
  fillList(ui.inputRecord, [
    ["upload", `${input.format}, ${input.width} x ${input.height}`],
    ["EXIF orientation applied", yesNo(input.oriented)],
    ["made square by", input.fit ?? "nothing (already square)"],
    ["square used", `x ${input.x}, y ${input.y}, side ${input.side}`],
    ["resized", input.resized ? `yes, to ${input.resized_to} x ${input.resized_to}` : "no"],
    ["resized from", resizedFrom ? `${resizedFrom[0]} x ${resizedFrom[1]}` : "–"],
  ]);
  const warnings = input.warnings ?? [];
  if (warnings.length === 0) {
    ui.warnings.replaceChildren(element("li", "none", "none"));
  } else {
    ui.warnings.replaceChildren(
      ...warnings.map((warning) => {
        const item = element("li");
        item.append(element("code", null, warning.code), ` ${warning.message}`);
        return item;
      }),
    );
  }
}

// --- small DOM helpers ----------------------------------------------------------------------------

function element(tag, className = null, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = String(text);
  return node;
}

function setSource(image, url) {
  if (url) image.src = url;
  else image.removeAttribute("src"); // an empty src would still be requested as the page's URL
}

function row(label, value) {
  const tr = element("tr");
  tr.append(element("td", null, label), element("td", "ms", value));
  return tr;
}

function fillList(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([term, value]) => [element("dt", null, term), element("dd", null, value)]));
}

function showError(title, detail) {
  ui.result.hidden = true; // an old result next to a new error would be misleading
  ui.errorTitle.textContent = title;
  ui.errorDetail.textContent = detail;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
}

function showKeyField() {
  ui.keyRow.hidden = false;
}

// --- wiring ---------------------------------------------------------------------------------------

ui.file.addEventListener("change", () => {
  if (ui.file.files.length > 0) superResolve(ui.file.files[0]);
});
// A new fit, or a key typed in after a 401: send the same file again.
for (const control of [ui.fit, ui.key]) {
  control.addEventListener("change", () => {
    if (lastFile) superResolve(lastFile);
  });
}
ui.step.addEventListener("input", showStep);

// Drag and drop onto the drop zone; a file dropped elsewhere must not replace the page.
for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (event) => {
    event.preventDefault();
    ui.drop.classList.add("dragging");
  });
}
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
ui.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("dragging");
  const file = event.dataTransfer?.files?.[0];
  if (file) superResolve(file);
});
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// Show the key field when the API declares API-key security (FACESR_API_KEYS is set).
fetch("openapi.json")
  .then((response) => (response.ok ? response.json() : null))
  .then((schema) => {
    if (schema?.components?.securitySchemes) showKeyField();
  })
  .catch(() => {}); // the field still appears on a 401
