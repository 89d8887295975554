// spkid page: enroll (upload or microphone), identify, diarization timeline. Talks only to this server's /v1 API.
// Names are shown with textContent, never parsed as HTML. The token lives in sessionStorage (or comes in the
// URL fragment #token=..., which browsers never send to a server).
"use strict";

const $ = (id) => document.getElementById(id);
const recorded = { enroll: [], identify: [] };       // WAV blobs made in the page, per form
let token = sessionStorage.getItem("spkid-token") || "";

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

async function api(method, path, body) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body });
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}`, status: r.status }));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function show(target, text, isError = false) {
  target.replaceChildren(el("span", { className: isError ? "error" : "", textContent: text }));
}

// speakers ----------------------------------------------------------------------------------------------------

async function refresh() {
  try {
    const data = await api("GET", "/v1/speakers");
    $("status").textContent = `connected: ${data.speakers.length} speaker(s) enrolled`;
    const t = data.threshold;
    $("threshold").textContent = `threshold ${t.value} (${t.source}; ${t.scoring})` +
      (t.clips_needed > 0 ? ` — ${t.clips_needed} more clip(s) for the registry's own threshold` : "");
    const rows = data.speakers.map((s) => {
      const rename = el("button", { className: "small", textContent: "Rename", type: "button" });
      rename.onclick = () => renameSpeaker(s.name);
      const del = el("button", { className: "small", textContent: "Delete", type: "button" });
      del.onclick = () => deleteSpeaker(s.name);
      return el("tr", {}, el("td", { textContent: s.name }), el("td", { textContent: String(s.utterances) }),
                el("td", { className: "actions" }, rename, " ", del));
    });
    $("speakers").tBodies[0].replaceChildren(...rows);
  } catch (e) {
    $("status").textContent = token ? `not connected: ${e.message}` : "paste a token to start";
  }
}

const speakerUrl = (name) => "/v1/speakers/" + encodeURIComponent(name);

async function renameSpeaker(name) {
  const next = prompt(`New name for ${name}`, name);
  if (next === null || next === name) return;
  try { await api("PATCH", speakerUrl(name), { name: next }); } catch (e) { alert(e.message); }
  refresh();
}

async function deleteSpeaker(name) {
  if (!confirm(`Delete ${name} and all their clips?`)) return;
  try { await api("DELETE", speakerUrl(name)); } catch (e) { alert(e.message); }
  refresh();
}

// microphone -> 16-bit PCM WAV ---------------------------------------------------------------------------------

function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (o, s) => [...s].forEach((ch, i) => buf.setUint8(o + i, ch.charCodeAt(0)));
  text(0, "RIFF"); buf.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); buf.setUint32(16, 16, true); buf.setUint16(20, 1, true); buf.setUint16(22, 1, true);
  buf.setUint32(24, rate, true); buf.setUint32(28, 2 * rate, true); buf.setUint16(32, 2, true);
  buf.setUint16(34, 16, true); text(36, "data"); buf.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const v of c) { buf.setInt16(o, Math.max(-1, Math.min(1, v)) * 32767, true); o += 2; }
  return new Blob([buf], { type: "audio/wav" });
}

let recording = null;                                  // { stop(): Promise<Blob> } while the microphone is on

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  node.onaudioprocess = (ev) => chunks.push(new Float32Array(ev.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(ctx.destination);
  return {
    async stop() {
      node.disconnect(); source.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      const rate = ctx.sampleRate;
      await ctx.close();
      return wavBlob(chunks, rate);
    },
  };
}

async function toggleRecord(button) {
  const target = button.dataset.target;
  if (!recording) {
    try { recording = await startRecording(); } catch (e) { show($(target + "-result"), "microphone: " + e.message, true); return; }
    button.classList.add("on"); button.textContent = "■ Stop";
    return;
  }
  const blob = await recording.stop();
  recording = null;
  button.classList.remove("on"); button.textContent = "● Record";
  if (target === "identify") recorded.identify = [blob]; else recorded.enroll.push(blob);
  const n = recorded[target].length;
  $(target + "-recorded").textContent = `${n} recording(s) ready (${(blob.size / 32000).toFixed(1)} s last)`;
}

// enroll / identify ---------------------------------------------------------------------------------------------

async function enroll(ev) {
  ev.preventDefault();
  const out = $("enroll-result");
  const form = new FormData();
  form.append("name", $("enroll-name").value);
  for (const f of $("enroll-files").files) form.append("audio", f, f.name);
  recorded.enroll.forEach((b, i) => form.append("audio", b, `recording-${i + 1}.wav`));
  if (!form.getAll("audio").length) return show(out, "choose or record at least one clip", true);
  show(out, "enrolling…");
  try {
    const r = await api("POST", "/v1/speakers", form);
    const flags = r.flags.map((f) => `${f.clip}: ${f.reason}${f.refused ? " (refused)" : ""}`).join("; ");
    show(out, `enrolled ${r.speaker}: ${r.utterances} clip(s)` + (flags ? ` — ${flags}` : ""));
    recorded.enroll = []; $("enroll-recorded").textContent = ""; $("enroll-files").value = "";
    refresh();
  } catch (e) { show(out, e.message, true); }
}

async function identify(ev) {
  ev.preventDefault();
  const out = $("identify-result");
  const form = new FormData();
  const file = $("identify-file").files[0];
  if (file) form.append("audio", file, file.name);
  else if (recorded.identify.length) form.append("audio", recorded.identify[0], "recording.wav");
  else return show(out, "choose or record a clip", true);
  form.append("top_k", $("identify-k").value || "1");
  show(out, "listening…");
  try {
    const r = await api("POST", "/v1/identify", form);
    const answer = el("div", { className: "answer" + (r.speaker === "unknown" ? " unknown" : ""),
                               id: "identify-answer", textContent: r.speaker });
    const rows = r.candidates.map((c) => el("tr", {}, el("td", { textContent: c.speaker }),
      el("td", { textContent: c.score.toFixed(3) })));
    const table = el("table", { id: "identify-candidates" },
      el("thead", {}, el("tr", {}, el("th", { textContent: "Candidate" }), el("th", { textContent: "Score" }))),
      el("tbody", {}, ...rows));
    const note = el("p", { className: "hint", textContent: `score ${r.score.toFixed(3)}, threshold ${r.threshold.value}` });
    out.replaceChildren(answer, note, table);
  } catch (e) { show(out, e.message, true); }
}

// diarization timeline -------------------------------------------------------------------------------------------

const COLOURS = ["#2f5fd0", "#d0612f", "#2fa05a", "#8a3fc4", "#c43f7a", "#3fa9c4", "#b59a1c", "#6b6b6b"];

function drawTimeline(segments) {
  const end = Math.max(1, ...segments.map((s) => s.end));
  const names = [...new Set(segments.map((s) => s.speaker))];
  const lanes = names.map((name, i) => {
    const track = el("div", { className: "lane-track" });
    for (const s of segments.filter((x) => x.speaker === name)) {
      const seg = el("div", { className: "seg", title: `${name}: ${s.start.toFixed(1)}–${s.end.toFixed(1)} s` });
      seg.style.left = (100 * s.start / end) + "%";
      seg.style.width = Math.max(0.2, 100 * (s.end - s.start) / end) + "%";
      seg.style.background = COLOURS[i % COLOURS.length];
      track.append(seg);
    }
    return el("div", { className: "lane" }, el("div", { className: "lane-name", textContent: name }), track);
  });
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => el("span", { textContent: (f * end).toFixed(1) + " s" }));
  $("timeline").replaceChildren(...lanes, el("div", { className: "axis" }, el("div"), el("div", {}, ...ticks)));
}

async function diarize(ev) {
  ev.preventDefault();
  const out = $("diarize-result");
  const file = $("diarize-file").files[0];
  if (!file) return show(out, "choose a recording", true);
  const form = new FormData();
  form.append("audio", file, file.name);
  if ($("diarize-n").value) form.append("num_speakers", $("diarize-n").value);
  show(out, "diarizing…");
  $("timeline").replaceChildren();
  try {
    const r = await api("POST", "/v1/diarize", form);
    show(out, `${r.segments.length} segment(s), ${r.speakers.length} speaker(s)`);
    drawTimeline(r.segments);
  } catch (e) { show(out, e.message, true); }
}

// start ------------------------------------------------------------------------------------------------------------

function useToken(value) {
  token = value.trim();
  sessionStorage.setItem("spkid-token", token);
  $("token").value = token;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { history.replaceState(null, "", location.pathname); useToken(decodeURIComponent(m[1])); }
  else { $("token").value = token; refresh(); }
  $("token-form").onsubmit = (ev) => { ev.preventDefault(); useToken($("token").value); };
  $("enroll-form").onsubmit = enroll;
  $("identify-form").onsubmit = identify;
  $("diarize-form").onsubmit = diarize;
  document.querySelectorAll("button.record").forEach((b) => { b.onclick = () => toggleRecord(b); });
});
