"""The demo bot: its echo processor on the frames it transforms, and the whole bot in a worker session.

``HostEcho`` runs in a Pipecat pipeline of its own (Pipecat's ``run_test``).
The whole bot runs in a real ``Session``, with the engine's side played by
the test: it delivers engine messages and reads what the bot sends from the
session's outbox. No peer, no engine process: those are the whole-host
tests' (tests/host).
"""

import asyncio
import json

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputTransportMessageFrame,
    LLMMessagesAppendFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    OutputTransportMessageUrgentFrame,
    UserImageRawFrame,
)
from pipecat.tests.utils import run_test

from engine.common.link import Outbox
from engine.common.protocol import (
    AppMessageIn,
    AppMessageOut,
    MediaCaptureSet,
    MediaSource,
    OutputOpen,
    PeerStateChange,
    SessionClose,
    SessionConnect,
    SessionOpen,
)
from tests.support.link import sent_messages, until
from workers import demo_bot
from workers.demo_bot import HostEcho
from workers.session import Session

RED, BLUE = (255, 0, 0), (0, 0, 255)


def red_left_blue_right(width: int, height: int) -> UserImageRawFrame:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = RED
    image[:, width // 2 :] = BLUE
    return UserImageRawFrame(image=image.tobytes(), size=(width, height), format="RGB", user_id="peer")


def pixels(frame: OutputImageRawFrame) -> np.ndarray:
    width, height = frame.size
    return np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)


def rtvi(type_: str, id_: str, data: dict) -> str:
    return json.dumps({"label": "rtvi-ai", "type": type_, "id": id_, "data": data})


# ---- HostEcho ----


async def test_the_picture_comes_back_mirrored_with_a_frame_counter_at_the_bottom_left():
    down, _ = await run_test(
        HostEcho("w-test", (320, 240)),
        frames_to_send=[red_left_blue_right(320, 240), red_left_blue_right(320, 240)],
        expected_down_frames=[OutputImageRawFrame, OutputImageRawFrame],
    )
    first, second = (pixels(frame) for frame in down)
    assert down[0].size == (320, 240) and down[0].format == "RGB"
    # Mirrored: blue on the left, red on the right.
    assert tuple(first[10, 10]) == BLUE and tuple(first[10, 310]) == RED
    # The label is white on black, at the bottom-left; the rest of the picture is the user's.
    label = first[200:, :160]
    assert (label == 255).all(axis=2).any()
    # Only the label changes from one frame to the next ("#1", "#2").
    changed_rows = np.nonzero((first != second).any(axis=(1, 2)))[0]
    assert len(changed_rows) and changed_rows.min() >= 200


async def test_the_picture_is_scaled_to_the_bots_video_size():
    down, _ = await run_test(
        HostEcho("w-test", (160, 120)),
        frames_to_send=[red_left_blue_right(640, 480)],
        expected_down_frames=[OutputImageRawFrame],
    )
    [frame] = down
    assert frame.size == (160, 120)
    assert pixels(frame).shape == (120, 160, 3)
    assert tuple(pixels(frame)[10, 10]) == BLUE


async def test_the_microphone_comes_back_as_the_bots_voice():
    pcm = np.arange(960, dtype=np.int16).tobytes()
    down, _ = await run_test(
        HostEcho("w-test", (320, 240)),
        frames_to_send=[InputAudioRawFrame(pcm, 48000, 1)],
        expected_down_frames=[OutputAudioRawFrame],
    )
    assert (down[0].audio, down[0].sample_rate, down[0].num_channels) == (pcm, 48000, 1)


async def test_app_messages_are_echoed_but_rtvi_ones_are_left_to_rtvi():
    rtvi_message = {"label": "rtvi-ai", "type": "client-ready", "id": "1", "data": {}}
    down, _ = await run_test(
        HostEcho("w-test", (320, 240)),
        frames_to_send=[
            InputTransportMessageFrame(message={"hi": 1}),
            InputTransportMessageFrame(message=rtvi_message),
        ],
        expected_down_frames=[OutputTransportMessageUrgentFrame, InputTransportMessageFrame],
    )
    assert down[0].message == {"echo": {"hi": 1}}
    assert down[1].message == rtvi_message


async def test_send_text_meant_for_an_llm_is_answered_as_a_chat_line():
    down, _ = await run_test(
        HostEcho("w-test", (320, 240)),
        frames_to_send=[LLMMessagesAppendFrame(messages=[{"role": "user", "content": "hello"}])],
        expected_down_frames=[OutputTransportMessageUrgentFrame],
    )
    assert down[0].message == {
        "label": "rtvi-ai",
        "type": "server-message",
        "data": {"type": "chat", "text": "w-test heard: hello"},
    }


# ---- the whole bot, in a worker session ----


class EngineSide:
    """The engine's end of one demo-bot session: what it delivers, and what the bot sent so far."""

    def __init__(self, body: dict):
        self.outbox = Outbox("to engine")
        self.session = Session(SessionOpen("pc-1", "runner-1", body), self.outbox, demo_bot.bot, "w-demo", 5.0)
        self.sent: list = []
        self.task = asyncio.create_task(self.session.run())

    async def wait_for(self, condition) -> None:
        """Wait until what the bot sent satisfies ``condition``."""

        def met() -> bool:
            self.sent += sent_messages(self.outbox)
            return condition(self.sent)

        await until(met, timeout=10)

    async def wait_for_message(self, **fields) -> dict:
        """The first app message the bot sent that has these fields."""
        found = []

        def has(sent) -> bool:
            found[:] = [
                message
                for message in (json.loads(m.json) for m in sent if isinstance(m, AppMessageOut))
                if all(message.get(k) == v for k, v in fields.items())
            ]
            return bool(found)

        await self.wait_for(has)
        return found[0]

    def deliver(self, message) -> None:
        self.session.deliver(message, [])

    async def connect(self) -> None:
        """The peer connects: once the bot is ready for it, as the engine reports it."""
        await self.wait_for(lambda sent: SessionConnect("pc-1") in sent)
        self.deliver(PeerStateChange("pc-1", "connected"))
        await self.wait_for(lambda sent: any(isinstance(m, OutputOpen) for m in sent))

    async def client_ready(self) -> dict:
        """The peer's RTVI client-ready, and the bot's bot-ready."""
        self.deliver(AppMessageIn("pc-1", rtvi("client-ready", "1", {"version": "1.0.0"})))
        return await self.wait_for_message(type="bot-ready")

    async def close(self) -> None:
        """The peer leaves; the session ends."""
        if not self.task.done():
            self.deliver(SessionClose("pc-1", "peer left"))
        await asyncio.wait_for(self.task, 10)
        self.sent += sent_messages(self.outbox)


@pytest.fixture
async def demo_session():
    """Starts demo-bot sessions; ends them before the test's loop closes (Pipecat's runner wants an orderly end)."""
    sessions = []

    def start(body: dict) -> EngineSide:
        sessions.append(EngineSide(body))
        return sessions[-1]

    yield start
    for session in sessions:
        await session.close()


async def test_the_demo_bot_connects_opens_its_output_and_captures_the_camera(demo_session):
    engine = demo_session({"video_width": 160, "video_height": 120})
    await engine.connect()
    await engine.wait_for(lambda sent: MediaCaptureSet("pc-1", MediaSource.CAMERA, True) in sent)
    assert OutputOpen("pc-1", audio=True, audio_auto_silence=True, video=True) in engine.sent
    assert MediaCaptureSet("pc-1", MediaSource.MICROPHONE, True) in engine.sent


async def test_the_voice_mode_asks_for_no_video(demo_session):
    engine = demo_session({"video": False})
    await engine.connect()
    ready = await engine.client_ready()
    assert ready["data"]["capabilities"]["video_in"] is False
    assert ready["data"]["capabilities"]["video_out"] is False
    assert OutputOpen("pc-1", audio=True, audio_auto_silence=True, video=False) in engine.sent
    assert MediaCaptureSet("pc-1", MediaSource.CAMERA, True) not in engine.sent


async def test_client_ready_is_answered_with_bot_ready_then_host_info(demo_session):
    engine = demo_session({"video": False})
    await engine.connect()
    await engine.client_ready()
    info = await engine.wait_for_message(type="server-message")
    assert info["data"] == {"type": "host-info", "worker_id": "w-demo", "pc_id": "pc-1"}
    replies = [json.loads(m.json)["type"] for m in engine.sent if isinstance(m, AppMessageOut)]
    assert replies.index("bot-ready") < replies.index("server-message")


async def test_chat_and_plain_app_messages_are_answered(demo_session):
    engine = demo_session({"video": False})
    await engine.connect()
    await engine.client_ready()
    engine.deliver(AppMessageIn("pc-1", rtvi("client-message", "2", {"t": "chat", "d": {"text": "hello"}})))
    engine.deliver(AppMessageIn("pc-1", json.dumps({"ping": 1})))
    response = await engine.wait_for_message(type="server-response")
    assert (response["id"], response["data"]) == ("2", {"t": "chat", "d": {"text": "w-demo heard: hello"}})
    assert await engine.wait_for_message(echo={"ping": 1}) == {"echo": {"ping": 1}}


async def test_the_demo_bot_ends_when_its_peer_leaves_and_stops_capturing(demo_session):
    engine = demo_session({"video": False})
    await engine.connect()
    await engine.close()  # well within the session's 5 s grace: the bot ended on its own
    assert MediaCaptureSet("pc-1", MediaSource.MICROPHONE, False) in engine.sent
    # The engine ended it: nothing is said back.
    assert not any(isinstance(m, SessionClose) for m in engine.sent)
