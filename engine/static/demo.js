// Demo client for the SmallWebRTC bot host: plain ES module, no dependencies.
// It speaks the same wire contract as Pipecat's own SmallWebRTC client, so it
// also works unchanged against Pipecat's development runner.

const $ = (id) => document.getElementById(id);

const el = {
  status: $("status"),
  error: $("error"),
  connect: $("connect"),
  disconnect: $("disconnect"),
  mic: $("mic"),
  camera: $("camera"),
  localVideo: $("local-video"),
  localPlaceholder: $("local-placeholder"),
  botVideo: $("bot-video"),
  botAudio: $("bot-audio"),
  localMeter: $("local-meter"),
  botMeter: $("bot-meter"),
  chatForm: $("chat-form"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  chatLog: $("chat-log"),
  stats: $("stats"),
};

// The server maps receivers by transceiver index: 0 microphone, 1 camera,
// 2 screen share.
const MIC = 0;
const CAMERA = 1;

const ICE_GATHERING_TIMEOUT_MS = 2000;
const TRICKLE_INTERVAL_MS = 200;
const PING_INTERVAL_MS = 1000;
const STATS_INTERVAL_MS = 1000;

// Public state, read by automated tests through window.demo.state.
const state = {
  status: "idle", // the badge: idle | connecting | connected | bot left | error
  connectionState: "new", // RTCPeerConnection.connectionState ("closed" once torn down)
  pcId: null,
  workerId: null,
  error: null,
  messages: [], // every application message received, parsed
  chat: [], // {from: "user" | "bot", text}
  stats: {},
};

// Everything that belongs to the current connection; null while idle.
let session = null;

// ---------------------------------------------------------------- connect

async function connect() {
  if (session) return;
  const s = (session = {
    pc: null,
    channel: null,
    offerUrl: "/api/offer",
    pcId: null,
    localStream: new MediaStream(),
    candidates: [], // local ICE candidates waiting for the next PATCH
    timers: [],
    meters: [],
    meterFrame: 0,
    // Created before any await so it counts as started by the Connect click.
    audioCtx: new AudioContext(),
    negotiation: Promise.resolve(),
    lastBytes: null,
  });
  resetForNewSession();
  setStatus("connecting");
  updateControls();

  try {
    const localStream = await getLocalMedia();
    if (session !== s) {
      // Disconnected while the permission prompt was open.
      localStream.getTracks().forEach((track) => track.stop());
      return;
    }
    s.localStream = localStream;
    el.localVideo.srcObject = localStream;
    if (localStream.getAudioTracks().length) {
      s.meters.push(createMeter(s.audioCtx, localStream, el.localMeter));
    }
    updateControls();

    const iceServers = await startSession(s);
    const pc = (s.pc = new RTCPeerConnection({ iceServers }));
    addTransceivers(s);
    openChannel(s);

    pc.ontrack = ({ track, transceiver }) => {
      const index = pc.getTransceivers().indexOf(transceiver);
      if (index === MIC) {
        const stream = new MediaStream([track]);
        el.botAudio.srcObject = stream;
        s.meters.push(createMeter(s.audioCtx, stream, el.botMeter));
      } else if (index === CAMERA) {
        el.botVideo.srcObject = new MediaStream([track]);
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      // A null candidate, or one with an empty string, only marks the end of gathering.
      if (candidate?.candidate) {
        s.candidates.push({
          candidate: candidate.candidate,
          sdp_mid: candidate.sdpMid,
          sdp_mline_index: candidate.sdpMLineIndex,
        });
      }
    };
    pc.onconnectionstatechange = () => {
      state.connectionState = pc.connectionState;
      renderStats();
      if (pc.connectionState === "connected") setStatus("connected");
      // "disconnected" is often transient: ICE keeps trying until it fails.
      if (pc.connectionState === "disconnected") setStatus("connecting");
      if (pc.connectionState === "failed") fail(s, new Error("The WebRTC connection failed."));
    };

    every(s, TRICKLE_INTERVAL_MS, () => flushCandidates(s));
    // getStats() rejects once the connection is closed; the next tick never comes then.
    every(s, STATS_INTERVAL_MS, () => collectStats(s).catch(() => {}));
    s.audioCtx.resume();
    drawMeters(s);

    await negotiate(s);
  } catch (err) {
    // After a disconnect the failing call was on a closed connection: nothing to report.
    if (session !== s) return;
    fail(s, err);
    throw err;
  }
}

// Asks for both devices at once (one permission prompt). If that fails for a
// reason other than a refusal, for instance because there is no camera, each is
// tried alone so that whatever works is still sent; with neither the call is
// receive-only.
async function getLocalMedia() {
  const media = navigator.mediaDevices;
  if (!media?.getUserMedia) {
    log("system", "Camera and microphone need https or localhost; connecting receive-only.");
    return new MediaStream();
  }
  try {
    return await media.getUserMedia({ audio: true, video: true });
  } catch (err) {
    // A refusal is final: asking again per device would only prompt twice more.
    if (err.name === "NotAllowedError") {
      log("system", "Camera and microphone blocked; connecting receive-only.");
      return new MediaStream();
    }
    const results = await Promise.allSettled([
      media.getUserMedia({ audio: true }),
      media.getUserMedia({ video: true }),
    ]);
    const tracks = results.flatMap((r) => (r.status === "fulfilled" ? r.value.getTracks() : []));
    log("system", `Camera or microphone unavailable (${err.message}).`);
    return new MediaStream(tracks);
  }
}

// The page's query parameters are the bot's request body, numbers as numbers:
// /?video_width=320&video_height=240 asks the demo bot for a 320x240 picture.
function botRequestBody() {
  const body = {};
  for (const [key, value] of new URLSearchParams(location.search)) {
    body[key] = value.trim() !== "" && Number.isFinite(Number(value)) ? Number(value) : value;
  }
  return body;
}

// Pipecat's runner registers a session first and takes the offer under it;
// a server without /start takes the offer at the bare /api/offer.
async function startSession(s) {
  try {
    const res = await request("/start", "POST", {
      transport: "webrtc",
      enableDefaultIceServers: false,
      body: botRequestBody(),
    });
    const { sessionId, iceConfig } = await res.json();
    if (!sessionId) throw new Error("no sessionId in the reply");
    s.offerUrl = `/sessions/${encodeURIComponent(sessionId)}/api/offer`;
    return iceConfig?.iceServers ?? [];
  } catch (err) {
    log("system", `/start unavailable (${err.message}); offering to /api/offer.`);
    return [];
  }
}

function addTransceivers(s) {
  const { pc, localStream } = s;
  pc.addTransceiver(localStream.getAudioTracks()[0] ?? "audio", { direction: "sendrecv" });
  pc.addTransceiver(localStream.getVideoTracks()[0] ?? "video", { direction: "sendrecv" });
  // The screen-share slot: the demo never shares, but the index must exist.
  pc.addTransceiver("video", { direction: "sendonly" });
}

function openChannel(s) {
  const channel = (s.channel = s.pc.createDataChannel("chat", { ordered: true }));
  channel.onopen = () => {
    // The server treats a silent channel as a dead peer.
    every(s, PING_INTERVAL_MS, () => channel.readyState === "open" && channel.send(`ping: ${Date.now()}`));
    sendTrackStatus(MIC);
    sendTrackStatus(CAMERA);
    sendJson(rtvi("client-ready", { version: "1.0.0", about: { library: "smallwebrtc-host demo" } }));
    updateControls();
  };
  channel.onclose = () => session === s && updateControls();
  channel.onmessage = ({ data }) => onChannelMessage(s, data);
}

// Offers run one at a time: the server may ask to renegotiate while the first
// answer is still on its way.
function negotiate(s) {
  s.negotiation = s.negotiation.catch(() => {}).then(() => sendOffer(s));
  return s.negotiation;
}

async function sendOffer(s) {
  const { pc } = s;
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const res = await request(s.offerUrl, "POST", {
    sdp: pc.localDescription.sdp,
    type: "offer",
    pc_id: s.pcId,
    restart_pc: false,
    request_data: botRequestBody(),
  });
  const answer = await res.json();
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  s.pcId = state.pcId = answer.pc_id;
  renderStats();
}

// Resolves when every local candidate is in the SDP, or after 2 s; candidates
// found later still reach the server through the PATCH trickle.
function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Candidates wait until the first answer has named the pc_id. Most of them are
// already in the offer's SDP; sending them again is harmless.
async function flushCandidates(s) {
  if (!s.pcId || !s.candidates.length) return;
  const candidates = s.candidates.splice(0);
  try {
    await request(s.offerUrl, "PATCH", { pc_id: s.pcId, candidates });
  } catch (err) {
    if (session === s) log("system", `Sending ICE candidates failed: ${err.message}`);
  }
}

/** fetch() with a JSON body; rejects on a non-2xx status with the server's reason. */
async function request(url, method, body) {
  const res = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    const detail = (await res.text()).slice(0, 200);
    throw new Error(`${method} ${url}: ${res.status} ${res.statusText} ${detail}`.trim());
  }
  return res;
}

/** A timer that lives as long as the session. */
function every(s, ms, fn) {
  s.timers.push(setInterval(fn, ms));
}

// ---------------------------------------------------------------- teardown

function disconnect() {
  if (!session) return;
  teardown(session);
  setStatus("idle");
  log("system", "Disconnected.");
}

function fail(s, err) {
  if (session !== s) return;
  console.error(err);
  teardown(s);
  setStatus("error");
  showError(err.message || String(err));
}

function teardown(s) {
  session = null;
  s.timers.forEach(clearInterval);
  cancelAnimationFrame(s.meterFrame);
  s.channel?.close();
  s.pc?.close();
  s.localStream.getTracks().forEach((track) => track.stop());
  s.audioCtx.close();

  el.localVideo.srcObject = null;
  el.botVideo.srcObject = null;
  el.botAudio.srcObject = null;
  el.localMeter.style.transform = el.botMeter.style.transform = "";
  Object.assign(state, { connectionState: "closed", pcId: null, workerId: null, stats: {} });
  renderStats();
  updateControls();
}

function resetForNewSession() {
  Object.assign(state, { connectionState: "new", pcId: null, workerId: null, error: null, stats: {} });
  state.messages.length = 0;
  state.chat.length = 0;
  el.chatLog.replaceChildren();
  el.error.hidden = true;
  renderStats();
}

// ---------------------------------------------------------------- data channel

function onChannelMessage(s, data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    log("raw", String(data));
    return;
  }
  if (msg?.type === "signalling") {
    onSignalling(s, msg.message);
    return;
  }
  state.messages.push(msg);
  onAppMessage(msg);
}

function onSignalling(s, message) {
  switch (message?.type) {
    case "renegotiate":
      negotiate(s).catch((err) => fail(s, err));
      break;
    case "peerLeft":
      teardown(s);
      setStatus("bot left");
      log("system", "The bot left the session.");
      break;
    default:
      log("raw", JSON.stringify({ type: "signalling", message }));
  }
}

function onAppMessage(msg) {
  const isRtvi = msg?.label === "rtvi-ai";
  if (msg?.echo?.label === "rtvi-ai") {
    // An echo bot reflecting our own RTVI messages: protocol noise, not conversation.
  } else if (isRtvi && msg.type === "bot-ready") {
    log("system", "Bot ready.");
  } else if (isRtvi && msg.type === "server-message" && msg.data?.type === "host-info") {
    // The demo bot says which worker hosts the session.
    state.workerId = msg.data.worker_id ?? null;
    if (msg.data.pc_id) state.pcId = msg.data.pc_id;
    renderStats();
    log("system", `Hosted by worker ${state.workerId}.`);
  } else if (isRtvi && msg.type === "server-response" && msg.data?.t === "chat") {
    addChat("bot", String(msg.data.d?.text ?? ""));
  } else {
    log("raw", JSON.stringify(msg));
  }
}

function sendChat(text) {
  text = String(text).trim();
  if (!text) return null;
  const msg = rtvi("client-message", { t: "chat", d: { text } });
  if (!sendJson(msg)) throw new Error("Not connected: chat needs an open data channel.");
  addChat("user", text);
  return msg.id;
}

function sendTrackStatus(index) {
  const enabled = localTrack(index)?.enabled ?? false;
  sendJson({ type: "signalling", message: { type: "trackStatus", receiver_index: index, enabled } });
}

function toggleTrack(index) {
  const track = localTrack(index);
  if (!track) return;
  track.enabled = !track.enabled;
  sendTrackStatus(index);
  updateControls();
}

function localTrack(index) {
  const stream = session?.localStream;
  return index === MIC ? stream?.getAudioTracks()[0] : stream?.getVideoTracks()[0];
}

/** Sends a JSON message; false when the channel is not open. */
function sendJson(msg) {
  const channel = session?.channel;
  if (channel?.readyState !== "open") return false;
  channel.send(JSON.stringify(msg));
  return true;
}

function rtvi(type, data) {
  const id = Math.random().toString(36).slice(2, 10) + Date.now().toString(36);
  return { label: "rtvi-ai", id, type, data };
}

// ---------------------------------------------------------------- stats

async function collectStats(s) {
  const report = await s.pc.getStats();
  let selectedPairId, succeededPair, video;
  let bytesIn = 0, bytesOut = 0, packetsLost = 0;
  report.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) selectedPairId = r.selectedCandidatePairId;
    // Fallback for browsers whose transport stats do not name the selected pair.
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") succeededPair = r;
    if (r.type === "inbound-rtp") {
      bytesIn += r.bytesReceived ?? 0;
      packetsLost += r.packetsLost ?? 0;
      if (r.kind === "video") video = r;
    }
    if (r.type === "outbound-rtp") bytesOut += r.bytesSent ?? 0;
  });
  if (session !== s) return;

  const pair = report.get(selectedPairId) ?? succeededPair;
  const now = performance.now();
  const last = s.lastBytes;
  s.lastBytes = { at: now, bytesIn, bytesOut };
  // Bytes × 8 per millisecond is kilobits per second.
  const kbps = (bytes, before) => (last ? ((bytes - before) * 8) / (now - last.at) : null);

  state.stats = {
    rttMs: pair?.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null,
    fps: video?.framesPerSecond ?? null,
    width: video?.frameWidth ?? null,
    height: video?.frameHeight ?? null,
    kbpsIn: kbps(bytesIn, last?.bytesIn),
    kbpsOut: kbps(bytesOut, last?.bytesOut),
    packetsLost,
  };
  renderStats();
}

function renderStats() {
  const st = state.stats;
  const num = (v, unit, digits = 0) => (v == null ? "—" : `${v.toFixed(digits)} ${unit}`);
  const values = {
    connectionState: state.connectionState,
    rtt: num(st.rttMs, "ms"),
    video: st.width ? `${st.width}×${st.height} · ${num(st.fps, "fps")}` : "—",
    kbpsIn: num(st.kbpsIn, "kbps"),
    kbpsOut: num(st.kbpsOut, "kbps"),
    packetsLost: st.packetsLost ?? "—",
    workerId: state.workerId ?? "—",
    pcId: state.pcId ?? "—",
  };
  for (const dd of el.stats.querySelectorAll("[data-stat]")) {
    dd.textContent = values[dd.dataset.stat];
  }
  // Monospace only for an actual id: a lone small dash looks like a stray mark.
  el.stats.querySelector('[data-stat="pcId"]').classList.toggle("mono", Boolean(state.pcId));
}

// ---------------------------------------------------------------- audio meters

/** Returns a function that draws the stream's current level onto the bar. */
function createMeter(ctx, stream, bar) {
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  // Not connected to the destination: playback is the <audio> element's job.
  ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  return () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    // Loudness is logarithmic: map -60..0 dBFS onto the bar's width.
    const db = 20 * Math.log10(Math.sqrt(sum / samples.length) || 1e-6);
    const level = Math.min(1, Math.max(0, (db + 60) / 60));
    bar.style.transform = `scaleX(${level})`;
  };
}

function drawMeters(s) {
  s.meters.forEach((draw) => draw());
  s.meterFrame = requestAnimationFrame(() => drawMeters(s));
}

// ---------------------------------------------------------------- UI

function setStatus(status) {
  state.status = status;
  el.status.textContent = status;
  el.status.dataset.state = status;
}

function showError(message) {
  state.error = message;
  el.error.textContent = message;
  el.error.hidden = false;
}

function updateControls() {
  const open = session?.channel?.readyState === "open";
  el.connect.disabled = Boolean(session);
  el.disconnect.disabled = !session;
  el.chatInput.disabled = el.chatSend.disabled = !open;

  for (const [button, index, name] of [[el.mic, MIC, "Mic"], [el.camera, CAMERA, "Camera"]]) {
    const track = localTrack(index);
    button.disabled = !track;
    button.classList.toggle("off", track?.enabled === false);
    button.textContent = track ? `${name} ${track.enabled ? "on" : "off"}` : name;
  }

  const camera = localTrack(CAMERA);
  // An audio-only stream still "loads" the video element, so "live" alone is not enough.
  el.localVideo.parentElement.classList.toggle("camera-off", Boolean(session) && !camera?.enabled);
  el.localPlaceholder.textContent = placeholderText(camera);
}

// Shown whenever the local tile has no live picture.
function placeholderText(camera) {
  if (!session) return "Your camera";
  if (!camera) return "No camera";
  return camera.enabled ? "Starting camera…" : "Camera off";
}

function addChat(from, text) {
  state.chat.push({ from, text });
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = from === "user" ? "You" : "Bot";
  const body = document.createElement("span");
  body.textContent = text;
  log(from, who, body);
}

/** kind: "user" and "bot" for chat, "system" for notes, "raw" for other messages. */
function log(kind, ...children) {
  const li = document.createElement("li");
  li.className = `log-${kind}`;
  li.append(...children);
  el.chatLog.append(li);
  el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

// A pending placeholder stays visible until the video has a frame to show.
for (const video of [el.localVideo, el.botVideo]) {
  video.addEventListener("loadeddata", () => video.parentElement.classList.add("live"));
  video.addEventListener("emptied", () => video.parentElement.classList.remove("live"));
}

// connect() has already put any error on the page.
el.connect.addEventListener("click", () => connect().catch(() => {}));
el.disconnect.addEventListener("click", disconnect);
el.mic.addEventListener("click", () => toggleTrack(MIC));
el.camera.addEventListener("click", () => toggleTrack(CAMERA));
el.chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  try {
    sendChat(el.chatInput.value);
    el.chatInput.value = "";
  } catch (err) {
    showError(err.message);
  }
});
// Leaving the page frees the bot's session on the server right away.
window.addEventListener("pagehide", disconnect);

updateControls();

window.demo = { connect, disconnect, sendChat, state };
