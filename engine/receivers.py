"""The peer's media as the engine hands it on: complete encoded frames, straight from aiortc's receivers.

aiortc's receiver reassembles each frame in its jitter buffer and puts
``(codec, frame)`` on a queue that its decoder thread reads. The engine
decodes nothing: ``tap_encoded_frames`` stands in that queue, so each complete
frame goes to a callback on the event loop as soon as it is assembled, and the
decoder thread only waits for the receiver to stop (its ``None`` still ends
the receiver's track). This reaches into the receiver's private state, which
the tests pin to the aiortc version in use.
"""

import threading
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from loguru import logger

OnEncodedFrame = Callable[[RTCRtpCodecParameters, JitterFrame], None]

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


class _EncodedFrameTap:
    """What a tapped receiver takes for its decoder queue."""

    def __init__(self, on_frame: OnEncodedFrame):
        self._on_frame = on_frame
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        # The receiver, on the event loop: a complete frame, or None when it stops.
        if item is None:
            self._stopped.set()
            return
        try:
            self._on_frame(*item)
        except Exception:
            # Never into aiortc's packet handling: that would stop the receiver.
            logger.exception("dropping a peer frame the engine could not hand on")

    def get(self) -> None:
        # The receiver's decoder thread, which has nothing to decode: None ends it.
        self._stopped.wait()
        return None


def tap_encoded_frames(receiver: RTCRtpReceiver, on_frame: OnEncodedFrame) -> None:
    """Have ``receiver`` hand its complete encoded frames to ``on_frame`` instead of decoding them.

    Call it before the receiver starts (before the answer is applied); a
    receiver already tapped keeps its tap.

    Raises:
        RuntimeError: If the receiver's decoder thread already reads its own queue.
    """
    if isinstance(getattr(receiver, _DECODER_QUEUE), _EncodedFrameTap):
        return
    if getattr(receiver, "_RTCRtpReceiver__decoder_thread") is not None:
        raise RuntimeError("the receiver has started: its frames can no longer be tapped")
    setattr(receiver, _DECODER_QUEUE, _EncodedFrameTap(on_frame))
