"""One bot session in a worker: the bot's connection, its control mailbox, and the bot itself."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loguru import logger
from pipecat.runner.types import SmallWebRTCRunnerArguments
from pipecat.utils.file_storage import FileStorage

from engine.common.link import Outbox
from engine.common.mailbox import Mailbox
from engine.common.protocol import (
    AppMessageIn,
    AudioIn,
    AudioOutAck,
    PeerStateChange,
    SessionClose,
    SessionOpen,
    TrackStatusChange,
    VideoIn,
    VideoInBacklog,
    VideoOutBitrateSet,
    VideoOutCodecSet,
    VideoOutKeyframeRequest,
)
from transport.connection import SmallWebRTCConnection

Bot = Callable[[SmallWebRTCRunnerArguments], Awaitable[None]]


@dataclass
class HostRunnerArguments(SmallWebRTCRunnerArguments):
    """What Pipecat's development runner hands a bot, plus the worker hosting it.

    Every field is as the runner sets it: ``body`` is the request's data (or
    the ``/start`` body), ``session_id`` the session's, ``file_storage`` what
    the bot module's ``create_file_storage()`` made; ``handle_sigint`` and
    ``handle_sigterm`` are False (the worker owns its signals), and
    ``pipeline_idle_timeout_secs`` is Pipecat's default. ``cli_args`` is None,
    as on every host but the development runner: there is no runner command
    line here.

    Parameters:
        worker_id: The worker process that runs this session.
    """

    worker_id: str = ""


class Session:
    """Owns one session's state in the worker; the engine's messages for it arrive in order.

    Media goes straight to the connection's input tracks (each a bounded
    queue with its own drop policy); everything else is handled here in the
    order it was sent. The session ends when the bot returns, or when the
    engine closes it and the bot has had ``bot_end_grace_s`` to finish.
    """

    def __init__(
        self,
        opening: SessionOpen,
        outbox: Outbox,
        bot: Bot,
        worker_id: str,
        bot_end_grace_s: float,
        file_storage: FileStorage | None = None,
    ):
        """Initialize the session; ``run()`` serves it.

        Args:
            opening: The engine's request.
            outbox: Where messages for the engine go.
            bot: The bot function.
            worker_id: This worker's id, for the bot and the logs.
            bot_end_grace_s: How long the bot may take to end after its peer is gone.
            file_storage: The bot's ``runner_args.file_storage``.
        """
        self.session_id = opening.session_id
        self.connection = SmallWebRTCConnection(opening.session_id, outbox)
        self.mailbox: Mailbox = Mailbox(f"session {opening.session_id}")
        self._opening = opening
        self._outbox = outbox
        self._bot = bot
        self._worker_id = worker_id
        self._grace_s = bot_end_grace_s
        self._file_storage = file_storage
        self.log = logger.bind(pc_id=opening.session_id, worker_id=worker_id)

    def deliver(self, message, payload: list) -> None:
        """Take a message from the engine for this session."""
        if isinstance(message, (AudioIn, VideoIn, VideoInBacklog)):
            self.connection.deliver_media(message, payload)
        else:
            self.mailbox.put(message)

    def close(self, reason: str) -> None:
        """End the session from the worker's side (the worker is stopping)."""
        self.mailbox.put_always(SessionClose(self.session_id, reason))

    async def run(self) -> None:
        """Run the bot and serve the session's messages until both are done."""
        runner_args = HostRunnerArguments(
            webrtc_connection=self.connection,
            body=self._opening.body,
            session_id=self._opening.runner_session_id,
            file_storage=self._file_storage,
            worker_id=self._worker_id,
        )
        bot_task = asyncio.create_task(self._bot(runner_args), name=f"bot-{self.session_id}")
        control_task = asyncio.create_task(self._serve_control())
        reason = "bot ended"
        try:
            done, _ = await asyncio.wait({bot_task, control_task}, return_when=asyncio.FIRST_COMPLETED)
            if control_task in done:
                # The engine closed the session: the bot has a grace period to end on its own.
                try:
                    await asyncio.wait_for(asyncio.shield(bot_task), self._grace_s)
                except TimeoutError:
                    self.log.warning(f"session {self.session_id}: bot still running {self._grace_s:g} s after its peer left; cancelling it")
                    bot_task.cancel()
            elif bot_task.exception() is not None:
                error = bot_task.exception()
                reason = f"bot failed: {type(error).__name__}: {error}"
                self.log.opt(exception=error).error(f"session {self.session_id}: {reason}")
        finally:
            control_task.cancel()
            if not bot_task.done():
                bot_task.cancel()
            await asyncio.gather(bot_task, control_task, return_exceptions=True)
            self.connection.end(reason)
            self.connection.release()
            self._outbox.forget_session(self.session_id)
            self.log.info(f"session {self.session_id} ended on worker {self._worker_id}")

    async def _serve_control(self) -> None:
        connection = self.connection
        while True:
            message = await self.mailbox.get()
            match message:
                case AudioOutAck(seq=seq):
                    connection.handle_audio_ack(seq)
                case VideoOutCodecSet(mime_type=mime_type, encoder=encoder):
                    connection.handle_video_codec(mime_type, encoder)
                case VideoOutKeyframeRequest():
                    connection.handle_keyframe_request()
                case VideoOutBitrateSet(bitrate=bitrate):
                    connection.handle_bitrate(bitrate)
                case PeerStateChange(state=state):
                    await connection.handle_state(state)
                case TrackStatusChange(receiver_index=index, enabled=enabled):
                    await connection.handle_track_status(index, enabled)
                case AppMessageIn(json=text):
                    await connection.handle_app_message(text)
                case SessionClose(reason=reason):
                    self.log.info(f"session {self.session_id} closed: {reason}")
                    await connection.handle_closed()
                    return
