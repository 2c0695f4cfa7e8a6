"""The real multiprocess host against real aiortc peers: media, messages, placement, failures, shutdown."""

import asyncio
import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from aiortc.sdp import SessionDescription

from tests.support.client import TestPeer, bars_match, dominant_frequency
from tests.support.host import SMALL_VIDEO, HostProcess, host_info, process_alive


@pytest.fixture(scope="module")
def host():
    """One host with two workers for the tests that leave it as they found it."""
    with HostProcess(workers=2) as running:
        yield running
        print(running.log()[-4000:])


async def test_echo_round_trip(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)

        frames = await peer.wait_for_video_frames(10)
        # The demo bot mirrors the picture; VP8 twice and YUV twice stay within 40 levels.
        assert bars_match(frames[-1][1], mirrored=True), "the echoed colour bars lost their colours"

        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, 48000) - 440.0) < 5.0

        await peer.send_app_message({"type": "greeting", "text": "hello"})
        echoed = await peer.wait_for_message(lambda m: "echo" in m)
        assert echoed["echo"] == {"type": "greeting", "text": "hello"}

        info = await host_info(peer)
        assert info["pc_id"] == peer.pc_id
        assert info["worker_id"] in host.worker_pids()


async def test_the_bots_video_goes_out_in_the_preferred_codec_the_peer_offers():
    env = {"SMALLWEBRTC_HOST_VIDEO_CODEC_PREFERENCE": '["H264"]', "SMALLWEBRTC_HOST_VIDEO_H264_PRESET": "veryfast"}
    with HostProcess(1, env=env) as host:
        async with TestPeer(host.base_url) as peer:
            await peer.connect(request_data=SMALL_VIDEO)  # the peer offers VP8 first, then H264

            frames = await peer.wait_for_video_frames(10)
            assert bars_match(frames[-1][1], mirrored=True), "the echoed colour bars lost their colours"
            video = SessionDescription.parse(peer.pc.remoteDescription.sdp).media[1]
            assert video.rtp.codecs[0].mimeType == "video/H264"


async def test_a_voice_bot_echoes_audio_and_sends_no_video(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data={"video": False})
        audio = await peer.wait_for_audio(1.0)
        assert abs(dominant_frequency(audio, 48000) - 440.0) < 5.0
        assert peer.video_frame_count == 0


async def test_client_leaving_ends_the_bot(host):
    peer = TestPeer(host.base_url)
    await peer.connect(request_data=SMALL_VIDEO)
    worker_id = (await host_info(peer))["worker_id"]
    pc_id = peer.pc_id
    await peer.close()

    def session_gone(workers):
        worker = next(w for w in workers if w["worker_id"] == worker_id)
        return pc_id not in worker["sessions"] and not worker["reported_sessions"]

    host.wait_for(session_gone, timeout=10)
    assert f"session {pc_id} ended on worker {worker_id}" in host.log()


async def test_two_clients_land_on_two_workers(host):
    async with TestPeer(host.base_url, tone_hz=440) as first, TestPeer(host.base_url, tone_hz=660) as second:
        await asyncio.gather(first.connect(request_data=SMALL_VIDEO), second.connect(request_data=SMALL_VIDEO))
        first_info, second_info = await asyncio.gather(host_info(first), host_info(second))
        assert first_info["worker_id"] != second_info["worker_id"]

        first_audio, second_audio = await asyncio.gather(first.wait_for_audio(1.0), second.wait_for_audio(1.0))
        assert abs(dominant_frequency(first_audio, 48000) - 440) < 5
        assert abs(dominant_frequency(second_audio, 48000) - 660) < 5


async def test_bad_json_on_the_data_channel_is_ignored(host):
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        peer.channel.send("{this is not json")
        peer.channel.send(json.dumps({"type": "signalling", "message": {"type": "trackStatus", "receiver_index": 9}}))
        await peer.send_app_message({"type": "after"})
        assert (await peer.wait_for_message(lambda m: "echo" in m))["echo"] == {"type": "after"}
    assert "not JSON" in host.log()


async def test_start_session_flow(host):
    async with TestPeer(host.base_url, use_start=True) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        assert peer.session_id
        frames = await peer.wait_for_video_frames(5)
        assert frames[-1][1].shape == (240, 320, 3)


def longest_gap(times: list[float]) -> float:
    """The longest time between consecutive arrivals."""
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


async def test_a_dead_workers_session_resumes_on_another_and_it_is_restarted():
    with HostProcess(workers=2) as host:
        async with TestPeer(host.base_url) as victim, TestPeer(host.base_url, tone_hz=660) as survivor:
            await asyncio.gather(victim.connect(request_data=SMALL_VIDEO), survivor.connect(request_data=SMALL_VIDEO))
            victim_worker = (await host_info(victim))["worker_id"]
            survivor_worker = (await host_info(survivor))["worker_id"]
            assert victim_worker != survivor_worker
            victim.messages.clear()

            # The survivor's own worst gap with nothing happening: this machine is shared and noisy.
            await asyncio.sleep(2.0)
            quiet_since = time.monotonic() - 2.0
            baseline = longest_gap([t for t, _ in survivor.audio_levels if t > quiet_since])

            killed_pid = host.worker_pids()[victim_worker]
            os.kill(killed_pid, signal.SIGKILL)
            killed_at = time.monotonic()

            # A fresh bot on the surviving worker takes the same peer connection.
            await victim.wait_for_video_frames(5, timeout=10)
            resumed_after = time.monotonic() - killed_at
            assert (await host_info(victim))["worker_id"] == survivor_worker
            audio = await victim.wait_for_audio(0.5)
            assert abs(dominant_frequency(audio, 48000) - 440) < 5
            print(f"victim's video resumed {resumed_after:.2f} s after the kill")
            assert resumed_after < 2.0 + 3.0  # detection (process exit, or 3 s of silence) + 2 s
            assert {"type": "peerLeft"} not in victim.signalling

            # The other session never noticed.
            await asyncio.sleep(0.5)
            gap = longest_gap([t for t, _ in survivor.audio_levels if t > killed_at - 0.5])
            print(f"survivor's longest audio gap around the kill: {gap * 1000:.0f} ms (quiet: {baseline * 1000:.0f} ms)")
            assert gap < max(0.1, 1.5 * baseline)

            # serve brings the dead worker back under the same id.
            host.wait_for(lambda ws: any(w["worker_id"] == victim_worker and w["pid"] != killed_pid for w in ws), 15)
            assert f"worker {victim_worker} lost" in host.log()


async def test_a_hung_worker_is_killed_before_its_session_moves_and_is_restarted():
    with HostProcess(workers=2) as host:
        async with TestPeer(host.base_url) as peer:
            await peer.connect(request_data=SMALL_VIDEO)
            hung_worker = (await host_info(peer))["worker_id"]
            hung_pid = host.worker_pids()[hung_worker]
            peer.messages.clear()
            os.kill(hung_pid, signal.SIGSTOP)
            # Silent past worker_dead_after_s: lost, killed, and only then does a fresh bot take the peer.
            await peer.wait_for_video_frames(5, timeout=15)
            assert (await host_info(peer))["worker_id"] != hung_worker
            assert not process_alive(hung_pid)
            log = host.log()
            killed = log.index(f"killing worker {hung_worker} (pid {hung_pid})")
            assert killed < log.index(f"session moved from lost worker {hung_worker}")
            # serve brings it back under the same id, as a new process.
            host.wait_for(lambda ws: any(w["worker_id"] == hung_worker and w["pid"] != hung_pid for w in ws), 15)


async def test_a_worker_past_its_memory_limit_finishes_its_session_while_a_successor_takes_new_ones():
    # Any worker that has run a session is past 1 MB.
    with HostProcess(1, env={"SMALLWEBRTC_HOST_WORKER_MEMORY_LIMIT_MB": "1"}) as host:
        [(first_id, first_pid)] = host.worker_pids().items()
        async with TestPeer(host.base_url) as peer:
            await peer.connect(request_data=SMALL_VIDEO)
            peer.messages.clear()
            workers = host.wait_for(lambda ws: len(ws) == 2 and ws, timeout=20)
            assert {w["worker_id"]: w["retiring"] for w in workers} == {first_id: "memory", f"{first_id}.1": None}
            # Its session goes on where it was.
            await peer.wait_for_video_frames(10)
            assert (await host_info(peer))["worker_id"] == first_id
        # Its last session over, it leaves; the successor, which never ran a session, stays.
        host.wait_for(lambda ws: [w["worker_id"] for w in ws] == [f"{first_id}.1"], timeout=20)
        assert not process_alive(first_pid)
        metrics = urllib.request.urlopen(f"{host.base_url}/metrics", timeout=5).read().decode()
        assert 'smallwebrtc_workers_retired_total{reason="memory"} 1.0' in metrics


async def test_a_dead_workers_session_ends_when_no_worker_has_room():
    with HostProcess(2, env={"SMALLWEBRTC_HOST_WORKER_CAPACITY": "1"}) as host:
        async with TestPeer(host.base_url) as victim, TestPeer(host.base_url) as other:
            await asyncio.gather(victim.connect(request_data=SMALL_VIDEO), other.connect(request_data=SMALL_VIDEO))
            victim_worker = (await host_info(victim))["worker_id"]
            os.kill(host.worker_pids()[victim_worker], signal.SIGKILL)
            await victim.wait_for_signalling("peerLeft", timeout=5)
            await other.wait_for_video_frames(10, timeout=5)
            assert "no worker has room" in host.log()


async def test_ended_sessions_leave_no_session_object_in_the_engine_or_the_workers(host):
    for _ in range(3):
        async with TestPeer(host.base_url) as peer:
            await peer.connect(request_data=SMALL_VIDEO)
            await peer.wait_for_video_frames(1)
    host.wait_for(lambda ws: all(not w["sessions"] and not w["reported_sessions"] for w in ws), 15)
    pids = [host.process.pid, *host.worker_pids().values()]
    answers = host.live_objects(pids)
    assert set(answers) == set(pids)
    for pid, answer in answers.items():
        # Name=live/kept: kept is what a full garbage collection leaves.
        kept = {name: int(count) for name, count in re.findall(r"(\w+)=\d+/(\d+)", answer)}
        assert kept and not any(kept.values()), f"pid {pid}: {answer}"


async def test_shutdown_leaves_no_processes_or_socket_files():
    host = HostProcess(workers=2).start()
    pids = list(host.worker_pids().values())
    runtime_dirs = [line.split("ipc://", 1)[1].rsplit("/", 1)[0] for line in host.log().splitlines() if "ipc://" in line]
    assert runtime_dirs and Path(runtime_dirs[0]).exists()
    async with TestPeer(host.base_url) as peer:
        await peer.connect(request_data=SMALL_VIDEO)
        assert host.stop() == 0
        await peer.wait_for_signalling("peerLeft", timeout=5)
    assert not any(process_alive(pid) for pid in pids)
    assert not Path(runtime_dirs[0]).exists()
