"""What a running worker loads: OpenCV only once a session has video (a voice bot's worker never does)."""

from pathlib import Path

import pytest

from tests.support.client import TestPeer
from tests.support.host import SMALL_VIDEO, HostProcess


def has_mapped(pid: int, library: str) -> bool:
    """Whether a process has loaded a shared object whose path names ``library``."""
    return any(f"/{library}" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


@pytest.fixture(scope="module")
def host():
    """One host, one worker with the demo bot."""
    with HostProcess(workers=1) as running:
        yield running
        print(running.log()[-4000:])


async def test_opencv_is_loaded_by_the_first_session_with_video_only(host):
    (pid,) = host.worker_pids().values()
    assert has_mapped(pid, "av.libs") and not has_mapped(pid, "cv2")

    async with TestPeer(host.base_url, send_video=False) as voice:
        await voice.connect(request_data={"video": False})
        await voice.wait_for_audio(0.5)
        assert not has_mapped(pid, "cv2"), "a voice session loaded OpenCV"

    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        await peer.wait_for_video_frames(1)
        assert has_mapped(pid, "cv2")
