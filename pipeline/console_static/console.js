// vistream console: plain JS, no build step. Reads /console/api/*, /stats and the search API.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { config: { max_k: 1000, image_search: true, thumbnails: true }, streams: new Map() };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// A fetch that turns a 4xx/5xx answer into an Error carrying the API's own message.
async function api(url, options) {
  let resp;
  try {
    resp = await fetch(url, options);
  } catch (e) {
    throw new Error(`the service did not answer (${e.message})`);
  }
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!resp.ok) {
    let detail = body && body.detail !== undefined ? body.detail : text || resp.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    const err = new Error(`${resp.status}: ${detail}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

const fmtTime = (ms) => (ms == null ? "–" : new Date(ms).toLocaleString());
const fmtNum = (x) => (x == null ? "–" : Number(x).toLocaleString());

// ------------------------------------------------------------------ streams

function streamCard(s) {
  const img = el("img", { alt: `latest frame of ${s.stream_id}` });
  const frame = el("div", { class: "frame" }, img);
  const card = el("div", { class: "stream", "data-stream": s.stream_id },
    el("div", { class: "title" }, el("b", {}, s.stream_id), el("span", { class: "muted when" })),
    frame);
  enableBoxSearch(frame, img);
  return card;
}

function drawOverlay(card, s) {
  const frame = card.querySelector(".frame");
  frame.querySelectorAll(".box, .caption").forEach((n) => n.remove());
  const W = s.width || 1, H = s.height || 1;
  for (const t of s.tracks) {
    const [x, y, w, h] = t.box;
    const box = el("div", { class: "box", style: {
      left: `${(100 * x) / W}%`, top: `${(100 * y) / H}%`,
      width: `${(100 * w) / W}%`, height: `${(100 * h) / H}%` } },
    el("span", { class: "id" }, t.track_id == null ? "?" : `#${t.track_id}`));
    frame.append(box);
  }
  if (s.caption) frame.append(el("div", { class: "caption" }, s.caption));
  // Tracks and captions come from other stages and may belong to an earlier frame: say so.
  const lagging = [["boxes", s.tracks_frame_id], ["caption", s.caption_frame_id]]
    .filter(([, id]) => id && id !== s.frame_id).map(([what, id]) => `${what} of ${id}`);
  card.querySelector(".when").textContent = `${s.frame_id} · ${fmtTime(s.timestamp_ms)}` +
    (lagging.length ? ` (${lagging.join(", ")})` : "");
}

function showStream(s) {
  const grid = $("#stream-grid");
  let entry = state.streams.get(s.stream_id);
  if (!entry) {
    entry = { card: streamCard(s), frameId: null };
    state.streams.set(s.stream_id, entry);
    grid.append(entry.card);
  }
  if (entry.frameId === s.frame_id) { drawOverlay(entry.card, s); return; }
  entry.frameId = s.frame_id;
  // Swap the picture once the next one has loaded, so a refresh never flickers.
  const next = new Image();
  next.onload = () => {
    const img = entry.card.querySelector("img");
    img.src = next.src;
    img.dataset.frameId = s.frame_id;
    drawOverlay(entry.card, s);
  };
  next.src = s.thumb_url;
}

function showStages(stages) {
  const body = $("#stages tbody");
  body.replaceChildren(...(stages.length ? stages.map((st) => el("tr", {},
    el("td", {}, st.stage), el("td", { class: "num" }, String(st.replicas)),
    el("td", { class: "num" }, fmtNum(st.records_in)), el("td", { class: "num" }, fmtNum(st.records_out)),
    el("td", { class: "num" }, st.records_per_s.toFixed(1)), el("td", { class: "num" }, fmtNum(st.lag)),
    el("td", { class: "num" }, fmtNum(st.dead_lettered)), el("td", { class: "num" }, fmtNum(st.errors))))
    : [el("tr", {}, el("td", { colspan: "8", class: "muted" }, "no stage runs in this process"))]));
}

function updateStreamFilter(streams) {
  const select = $("#stream-filter");
  const have = new Set([...select.options].map((o) => o.value));
  for (const s of streams) if (!have.has(s.stream_id)) select.append(el("option", { value: s.stream_id }, s.stream_id));
}

async function refreshStreams() {
  try {
    const data = await api("/console/api/streams");
    $("#no-streams").hidden = data.streams.length > 0;
    if (!data.store) $("#no-streams").textContent = "no thumbnail store: give the config's thumbnail stage a store_dir";
    data.streams.forEach(showStream);
    showStages(data.stages);
    updateStreamFilter(data.streams);
    $("#store-info").textContent = data.store
      ? `thumbnail store: ${fmtNum(data.store.frames)} frames, ${(data.store.bytes / 1048576).toFixed(1)} of ${(data.store.max_bytes / 1048576).toFixed(0)} MiB`
      : "";
    $("#status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#status").textContent = `streams: ${e.message}`;
  }
}

// ------------------------------------------------------------------ index

async function refreshIndex() {
  try {
    const st = await api("/stats");
    const rows = [
      ["model", `${st.model || "–"} (configured: ${st.configured_model})${st.warm_start ? ", warm start" : ""}`],
      ["model version", st.model_version], ["bits", st.n_bits], ["codes indexed", fmtNum(st.codes_indexed)],
      ["labelled", fmtNum(st.labelled)], ["classes", st.classes.join(", ") || "–"],
      ["labels pending / matched / expired", `${st.labels_pending} / ${st.labels_matched} / ${st.labels_expired}`],
      ["training queue", fmtNum(st.training_queue)], ["model updates / swaps", `${st.model_updates} / ${st.swaps}`],
      ["updating", st.updating ? "yes" : "no"],
      ["last fit", st.last_fit_at ? fmtTime(Date.parse(st.last_fit_at)) : "never"],
      ["last swap", st.last_swap_at ? fmtTime(Date.parse(st.last_swap_at)) : "never"],
    ];
    $("#index-stats tbody").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v)))));
  } catch (e) {
    $("#index-stats tbody").replaceChildren(el("tr", {}, el("td", { class: "error" }, `index: ${e.message}`)));
  }
}

// ------------------------------------------------------------------ search

function filters() {
  const from = $("#t-from").value ? Date.parse($("#t-from").value) : null;
  const to = $("#t-to").value ? Date.parse($("#t-to").value) : null;
  return { stream: $("#stream-filter").value, from, to };
}

function wanted() {
  const k = Math.max(1, Math.min(parseInt($("#k").value, 10) || 12, state.config.max_k));
  const f = filters();
  const filtered = Boolean(f.stream || f.from != null || f.to != null);
  // Filters apply to the nearest answers: ask for as many as the service allows.
  return { k, f, ask: filtered ? state.config.max_k : k };
}

function keep(hit, f) {
  if (f.stream && hit.stream_id !== f.stream) return false;
  if (f.from != null && (hit.timestamp_ms == null || hit.timestamp_ms < f.from)) return false;
  if (f.to != null && (hit.timestamp_ms == null || hit.timestamp_ms > f.to)) return false;
  return true;
}

function showError(message) {
  const box = $("#search-error");
  box.textContent = message;
  box.hidden = !message;
}

function showHits(answer, k, f, t0) {
  const hits = answer.hits.filter((h) => keep(h, f)).slice(0, k);
  const ms = performance.now() - t0;
  $("#search-info").textContent = `${hits.length} of ${answer.hits.length} nearest shown · ` +
    `${answer.model || "?"} v${answer.model_version}${answer.warm_start ? " (warm start)" : ""} · ` +
    `${fmtNum(answer.frames_indexed)} frames indexed · search ${answer.took_ms.toFixed(1)} ms, page ${ms.toFixed(0)} ms`;
  $("#results").replaceChildren(...hits.map((h) => {
    const img = el("img", { alt: h.frame_id, loading: "lazy", title: "find frames like this one" });
    img.src = `/console/thumbs/${encodeURIComponent(h.frame_id)}`;
    // The thumbnail stage may be a moment behind the index: one retry, then say so.
    img.onerror = () => {
      if (img.dataset.retried) { img.alt = "(no thumbnail)"; return; }
      img.dataset.retried = "1";
      setTimeout(() => { img.src = `${img.src.split("?")[0]}?retry=1`; }, 1000);
    };
    img.onclick = () => { $("#frame-id").value = h.frame_id; searchFrame(h.frame_id); };
    return el("div", { class: "hit", "data-frame-id": h.frame_id }, img,
      el("div", {}, el("span", { class: "dist" }, `d=${h.distance}`), ` · ${h.stream_id || "–"}`),
      el("div", { class: "muted" }, fmtTime(h.timestamp_ms)),
      el("div", { class: "muted" }, h.frame_id),
      ...(h.caption ? [el("div", {}, h.caption)] : []));
  }));
}

async function runSearch(request, preview) {
  const { k, f, ask } = wanted();
  showError("");
  $("#search-info").textContent = "searching…";
  $("#query-preview").replaceChildren(...(preview ? [preview] : []));
  $("#query-preview").hidden = !preview;
  const t0 = performance.now();
  try {
    showHits(await request(ask), k, f, t0);
  } catch (e) {
    $("#results").replaceChildren();
    $("#search-info").textContent = "";
    showError(e.message);
  }
}

function searchImage(blob, preview) {
  return runSearch((ask) => {
    const form = new FormData();
    form.append("image", blob, blob.name || "query.png");
    return api(`/search/image?k=${ask}`, { method: "POST", body: form });
  }, preview);
}

function searchFrame(frameId) {
  if (!frameId) { showError("enter a frame id"); return Promise.resolve(); }
  const img = el("img", { alt: frameId, src: `/console/thumbs/${encodeURIComponent(frameId)}` });
  img.onerror = () => img.remove();
  return runSearch((ask) => api(`/search/frame?frame_id=${encodeURIComponent(frameId)}&k=${ask}`), img);
}

// Drag a box on a stream frame: the box is cropped from the frame's picture and searched.
function enableBoxSearch(frame, img) {
  let start = null, sel = null;
  const point = (ev) => {
    const r = frame.getBoundingClientRect();
    return { x: Math.max(0, Math.min(ev.clientX - r.left, r.width)), y: Math.max(0, Math.min(ev.clientY - r.top, r.height)) };
  };
  frame.addEventListener("mousedown", (ev) => {
    if (!img.naturalWidth) return;
    ev.preventDefault();
    start = point(ev);
    sel = el("div", { class: "selection" });
    frame.append(sel);
  });
  window.addEventListener("mousemove", (ev) => {
    if (!start) return;
    const p = point(ev);
    Object.assign(sel.style, { left: `${Math.min(p.x, start.x)}px`, top: `${Math.min(p.y, start.y)}px`,
      width: `${Math.abs(p.x - start.x)}px`, height: `${Math.abs(p.y - start.y)}px` });
  });
  window.addEventListener("mouseup", (ev) => {
    if (!start) return;
    const p = point(ev), s = start;
    start = null;
    sel.remove();
    const w = Math.abs(p.x - s.x), h = Math.abs(p.y - s.y);
    if (w < 4 || h < 4) return;
    const scale = img.naturalWidth / frame.clientWidth;
    const canvas = el("canvas");
    canvas.width = Math.max(1, Math.round(w * scale));
    canvas.height = Math.max(1, Math.round(h * scale));
    canvas.getContext("2d").drawImage(img, Math.min(p.x, s.x) * scale, Math.min(p.y, s.y) * scale,
      canvas.width, canvas.height, 0, 0, canvas.width, canvas.height);
    canvas.toBlob((blob) => {
      const preview = el("img", { alt: `box on ${img.dataset.frameId}`, src: canvas.toDataURL("image/png") });
      searchImage(new File([blob], "box.png", { type: "image/png" }), preview);
      location.hash = "#search";
    }, "image/png");
  });
}

// ------------------------------------------------------------------ start

async function start() {
  try { state.config = await api("/console/api/config"); } catch (e) { /* defaults */ }
  $("#k").max = state.config.max_k;
  if (!state.config.image_search) $("#upload").title = "image search is not configured on this service";
  $("#upload").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const preview = /^image\//.test(file.type) ? el("img", { alt: file.name, src: URL.createObjectURL(file) }) : null;
    searchImage(file, preview);
  });
  $("#search-form").addEventListener("submit", (ev) => { ev.preventDefault(); searchFrame($("#frame-id").value.trim()); });
  await Promise.all([refreshStreams(), refreshIndex()]);
  // Live while visible; a background tab asks for nothing.
  setInterval(() => { if (!document.hidden) refreshStreams(); }, 1000);
  setInterval(() => { if (!document.hidden) refreshIndex(); }, 3000);
}

start();
