"""The rule for an encoded video stream that crosses a bounded queue: after a gap, wait for a keyframe.

A decoder cannot skip a frame, so encoded video is never thinned "newest
wins". Frames are numbered by their sender; wherever one was dropped (a full
queue on either side of the link) or the stream starts, the receiving side
drops frames up to the next keyframe and asks for one, instead of decoding a
broken picture.
"""

import time
from collections.abc import Callable


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded video frame decodes on its own (VP8 and H264; another codec: no)."""
    match mime_type.lower():
        case "video/vp8":
            # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
            return len(data) > 0 and data[0] & 0x01 == 0
        case "video/h264":
            # Annex B, as aiortc reassembles it: an IDR slice (5) or the SPS (7) that starts one.
            return any(nal and nal[0] & 0x1F in (5, 7) for nal in data.split(b"\x00\x00\x01"))
    return False


# Keyframe requests are repeated at most this often while none arrives.
KEYFRAME_RETRY_S = 0.5


class KeyframeGate:
    """Admits the frames of one encoded stream that decode cleanly, asking for a keyframe after a gap."""

    def __init__(self, request_keyframe: Callable[[], None]):
        """Initialize the gate.

        Args:
            request_keyframe: Asks the stream's encoder (or its peer) for a keyframe.
        """
        self._request_keyframe = request_keyframe
        self._next_index: int | None = None
        self._awaiting_keyframe = True
        self._requested_at = -KEYFRAME_RETRY_S
        self.dropped_frames = 0

    def admit(self, index: int, keyframe: bool) -> bool:
        """Whether the frame numbered ``index`` may be decoded (False: it is dropped)."""
        continuous = index == self._next_index
        self._next_index = index + 1
        if keyframe:
            self._awaiting_keyframe = False
            return True
        if self._awaiting_keyframe or not continuous:
            self.break_stream()
            self.dropped_frames += 1
            return False
        return True

    def break_stream(self) -> None:
        """Drop what follows until a keyframe (frames were lost, or did not decode), asking for one."""
        self._awaiting_keyframe = True
        now = time.monotonic()
        if now - self._requested_at >= KEYFRAME_RETRY_S:
            self._requested_at = now
            self._request_keyframe()
