// A stand-in for the device layer of Pipecat's SmallWebRTC web client, for tests.
//
// @pipecat-ai/small-webrtc-transport gets the camera and microphone through
// DailyMediaManager, which wraps daily-js: its startCamera() loads Daily's
// "call machine" script from the internet, which a test machine cannot reach.
// The transport's script (in Pipecat's prebuilt clients, or bundled in the app
// the tests build with client-js) is served to the browser with one
// expression changed, `new DailyMediaManager(` becoming
// `new (window.__plainMediaManager?.(DailyMediaManager) ?? DailyMediaManager)(`,
// so the transport builds this class instead, with the same arguments. It
// extends the same base class (the client's MediaManager) and gets the devices
// with plain getUserMedia(). The transport, its signalling, its data channel
// and the rest of the page stay as they were built.
window.__plainMediaManager = (DailyMediaManager) => {
  const MediaManager = Object.getPrototypeOf(DailyMediaManager);
  const LOCAL = { id: "local", local: true, name: "" };

  return class PlainMediaManager extends MediaManager {
    constructor(enablePlayer, enableRecording, onTrackStarted, onTrackStopped) {
      super();
      this.onTrackStartedCallback = onTrackStarted;
      this.onTrackStoppedCallback = onTrackStopped;
      this._supportsScreenShare = true; // as DailyMediaManager: keeps the 3-transceiver layout
      this._initialized = false;
      this._connected = false;
      this._local = { audio: undefined, video: undefined };
      this._selectedMic = {};
      this._selectedCam = {};
      this._selectedSpeaker = {};
      this._levelTimer = null;
      this._audioCtx = null;
      window.__mediaManager = this;
    }

    async initialize() {
      if (this._initialized) return;
      this._initialized = true;
      if (this._micEnabled) await this._start("audio");
      if (this._camEnabled) await this._start("video");
      const devices = await navigator.mediaDevices.enumerateDevices();
      const of = (kind) => devices.filter((d) => d.kind === kind);
      this._callbacks.onAvailableCamsUpdated?.(of("videoinput"));
      this._callbacks.onAvailableMicsUpdated?.(of("audioinput"));
      this._callbacks.onAvailableSpeakersUpdated?.(of("audiooutput"));
      this._selectedSpeaker = of("audiooutput")[0] ?? {};
      this._callbacks.onCamUpdated?.(this._selectedCam);
      this._callbacks.onMicUpdated?.(this._selectedMic);
      this._callbacks.onSpeakerUpdated?.(this._selectedSpeaker);
    }

    async connect() {
      this._connected = true;
      await this.initialize();
    }

    async disconnect() {
      clearInterval(this._levelTimer);
      this._levelTimer = null;
      this._audioCtx?.close();
      this._audioCtx = null;
      for (const kind of ["audio", "video"]) {
        const track = this._local[kind];
        if (track) {
          track.stop();
          this._stopped(kind, track);
        }
      }
      this._local = { audio: undefined, video: undefined };
      this._initialized = false;
      this._connected = false;
    }

    async userStartedSpeaking() {}
    bufferBotAudio() {}

    async _devices(kind) {
      return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === kind);
    }
    getAllMics() { return this._devices("audioinput"); }
    getAllCams() { return this._devices("videoinput"); }
    getAllSpeakers() { return this._devices("audiooutput"); }

    updateMic(deviceId) { return this._start("audio", deviceId); }
    updateCam(deviceId) { return this._start("video", deviceId); }
    updateSpeaker(deviceId) {
      this._selectedSpeaker = { deviceId };
      this._callbacks.onSpeakerUpdated?.(this._selectedSpeaker);
    }
    get selectedMic() { return this._selectedMic; }
    get selectedCam() { return this._selectedCam; }
    get selectedSpeaker() { return this._selectedSpeaker; }

    async enableMic(enable) {
      this._micEnabled = enable;
      await this._enable("audio", enable);
    }
    async enableCam(enable) {
      this._camEnabled = enable;
      await this._enable("video", enable);
    }
    enableScreenShare() {
      console.warn("PlainMediaManager does not share screens.");
    }
    get isCamEnabled() { return Boolean(this._local.video?.enabled); }
    get isMicEnabled() { return Boolean(this._local.audio?.enabled); }
    get isSharingScreen() { return false; }

    tracks() {
      return { local: { audio: this._local.audio, video: this._local.video, screenAudio: undefined, screenVideo: undefined } };
    }

    async _enable(kind, enable) {
      if (!this._initialized) return; // initialize() takes the flags into account
      const track = this._local[kind];
      if (enable && !track) return this._start(kind);
      if (!track) return;
      track.enabled = enable;
      enable ? this._started(kind, track) : this._stopped(kind, track);
    }

    // Opens a device (the default one, or deviceId) and hands its track to the transport.
    async _start(kind, deviceId) {
      const constraints = { [kind]: deviceId ? { deviceId: { exact: deviceId } } : true };
      let track;
      try {
        [track] = (await navigator.mediaDevices.getUserMedia(constraints)).getTracks();
      } catch (err) {
        this._callbacks.onDeviceError?.(err);
        throw err;
      }
      const old = this._local[kind];
      this._local[kind] = track;
      if (old) old.stop();
      const settings = track.getSettings();
      const info = { deviceId: settings.deviceId, label: track.label, kind: `${kind}input`, groupId: settings.groupId ?? "" };
      if (kind === "audio") {
        this._selectedMic = info;
        this._callbacks.onMicUpdated?.(info);
        this._meter(track);
      } else {
        this._selectedCam = info;
        this._callbacks.onCamUpdated?.(info);
      }
      this._started(kind, track);
    }

    _started(kind, track) {
      this._callbacks.onTrackStarted?.(track, LOCAL);
      this.onTrackStartedCallback?.({ type: kind, track });
    }

    _stopped(kind, track) {
      this._callbacks.onTrackStopped?.(track, LOCAL);
      this.onTrackStoppedCallback?.({ type: kind, track });
    }

    // The local audio level the client shows (Daily reports it every 100 ms).
    _meter(track) {
      clearInterval(this._levelTimer);
      this._audioCtx?.close();
      const ctx = (this._audioCtx = new AudioContext());
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 1024;
      ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      this._levelTimer = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let peak = 0;
        for (const v of samples) peak = Math.max(peak, Math.abs(v));
        this._callbacks.onLocalAudioLevel?.(track.enabled ? peak : 0);
      }, 100);
    }
  };
};
