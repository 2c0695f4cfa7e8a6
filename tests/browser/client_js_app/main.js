// A web app as Pipecat's client docs write one: a PipecatClient over the
// SmallWebRTC transport, with the camera and microphone on, the bot's audio
// and video played in the page, and RTVI messages both ways. `window.app` is
// what the test drives and reads.
import { PipecatClient } from "@pipecat-ai/client-js";
import { SmallWebRTCTransport } from "@pipecat-ai/small-webrtc-transport";

const app = (window.app = { states: [], serverMessages: [], errors: [], botReady: null });

const client = new PipecatClient({
  transport: new SmallWebRTCTransport(),
  enableMic: true,
  enableCam: true,
  callbacks: {
    onTransportStateChanged: (state) => app.states.push(state),
    onBotReady: (data) => (app.botReady = data),
    onServerMessage: (data) => app.serverMessages.push(data),
    onTrackStarted: (track, participant) => {
      if (participant?.local) return;
      const element = document.getElementById(track.kind === "audio" ? "bot-audio" : "bot-video");
      element.srcObject = new MediaStream([track]);
    },
    onError: (message) => app.errors.push(message),
  },
});

// Connects with an offer to the host's /api/offer (no /start), the request data going to the bot.
app.connect = (requestData) => client.connect({ webrtcRequestParams: { endpoint: "/api/offer", requestData } });
// An RTVI client request; resolves with the data of the bot's server response.
app.ask = (text) => client.sendClientRequest("chat", { text });
app.disconnect = () => client.disconnect();
app.client = client;
