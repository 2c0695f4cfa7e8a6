"""The peer's media to the bot (what it captures, numbered frames, gaps, backlogs) and the bot's output tracks to the peer."""

import asyncio

from aiortc.sdp import SessionDescription

from engine.common.keyframes import is_keyframe
from engine.common.protocol import (
    AudioIn,
    AudioOut,
    AudioOutAck,
    MediaCaptureSet,
    MediaSource,
    OutputOpen,
    SessionConnect,
    TrackStatusChange,
    VideoIn,
    VideoInBacklog,
    VideoOut,
    VideoOutCodecSet,
    VideoOutKeyframeRequest,
)
from engine.common.settings import HostSettings
from engine.peer import media
from engine.tracks import OPUS_SILENCE
from tests.support.peers import PC_ID, PeerRig


def payloads(rig: PeerRig, kind: type) -> list[bytes]:
    return [bytes(payload[0]) for message, payload in rig.worker.received if isinstance(message, kind)]


async def test_captured_sources_reach_the_worker_as_numbered_frames():
    async with PeerRig(send_media=True) as rig:
        await rig.connect()
        rig.from_bot(SessionConnect(PC_ID))
        rig.from_bot(MediaCaptureSet(PC_ID, MediaSource.MICROPHONE, True))
        rig.from_bot(MediaCaptureSet(PC_ID, MediaSource.CAMERA, True))
        audio = await rig.worker.wait_for(AudioIn, count=5)
        video = await rig.worker.wait_for(VideoIn, count=5)

        assert {(m.mime_type, m.session_id) for m in audio} == {("audio/opus", PC_ID)}
        assert {(m.source, m.mime_type) for m in video} == {(MediaSource.CAMERA, "video/VP8")}
        assert all(payloads(rig, AudioIn)) and all(payloads(rig, VideoIn))
        # Numbered one after the other (where they start depends on what the peer had sent: the tests below).
        indexes = [m.index for m in video]
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))


async def video_packets_sent(rig: PeerRig) -> int:
    stats = await rig.client.pc.getStats()
    return sum(s.packetsSent for s in stats.values() if s.type == "outbound-rtp" and s.kind == "video")


async def test_a_bot_capturing_video_the_peer_already_sends_starts_from_its_backlog_without_a_new_offer():
    async with PeerRig(send_media=True) as rig:
        await rig.connect()
        async with asyncio.timeout(10):
            while await video_packets_sent(rig) < 60:
                await asyncio.sleep(0.05)
        rig.from_bot(SessionConnect(PC_ID))
        rig.from_bot(MediaCaptureSet(PC_ID, MediaSource.CAMERA, True))

        [backlog] = await rig.worker.wait_for(VideoInBacklog)
        [(_, frames)] = [(m, p) for m, p in rig.worker.received if isinstance(m, VideoInBacklog)]
        assert backlog.source == MediaSource.CAMERA and len(frames) == len(backlog.pts) >= 1
        assert is_keyframe(backlog.mime_type, bytes(frames[0]))
        # The live frames number on from it: nothing to wait for, no keyframe asked of the peer.
        [first_live, *_] = await rig.worker.wait_for(VideoIn)
        assert first_live.index == backlog.first_index + len(backlog.pts)
        assert rig.client.signalling() == []


async def test_a_source_the_bot_does_not_capture_in_time_stops_and_starts_later_from_a_keyframe_request(monkeypatch):
    monkeypatch.setattr(media, "BACKLOG_AFTER_BOT_READY_S", 0.05)
    async with PeerRig(send_media=True) as rig:
        await rig.connect()
        rig.from_bot(SessionConnect(PC_ID))
        await asyncio.sleep(0.3)  # past the bot's time to capture: the camera's receiver stops
        rig.from_bot(MediaCaptureSet(PC_ID, MediaSource.CAMERA, True))

        [first, *_] = await rig.worker.wait_for(VideoIn)
        assert rig.worker.messages(VideoInBacklog) == []
        # The peer connected before the bot was ready: as Pipecat, it is asked for a new offer.
        assert rig.client.signalling() == [{"type": "renegotiate"}]


async def test_the_worker_encodes_in_the_preferred_codec_the_peer_offers_as_the_engine_says():
    settings = {"video_codec_preference": ["H264"], "video_vp8_cpu_used": -10, "video_h264_preset": "veryfast"}
    async with PeerRig(**settings) as rig:
        await rig.connect()  # the client offers VP8 first, then H264
        rig.from_bot(OutputOpen(PC_ID, audio=True, audio_auto_silence=True, video=True))

        [codec_set] = await rig.worker.wait_for(VideoOutCodecSet)
        assert codec_set == VideoOutCodecSet(PC_ID, "video/H264", HostSettings(**settings).video_encoder)
        # The answer puts H264 first for the camera's and the bot's video, and VP8 (and every RTX) after it.
        video = SessionDescription.parse(rig.client.pc.remoteDescription.sdp).media[1]
        codecs = video.rtp.codecs
        assert codecs[0].mimeType == "video/H264" and "video/VP8" in [codec.mimeType for codec in codecs]
        assert all(
            codec.parameters["apt"] == codecs[place - 1].payloadType
            for place, codec in enumerate(codecs)
            if codec.mimeType == "video/rtx"
        )


async def test_without_a_preference_the_peers_first_codec_is_sent():
    async with PeerRig(video_codec_preference=[]) as rig:
        await rig.connect()
        rig.from_bot(OutputOpen(PC_ID, audio=True, audio_auto_silence=True, video=True))

        assert await rig.worker.wait_for(VideoOutCodecSet) == [VideoOutCodecSet(PC_ID, "video/VP8")]


async def test_video_receivers_hold_up_frames_behind_a_lost_packet_for_their_own_capacity_not_aiortcs():
    # Received from the start (for their backlogs), they never get the resized buffer a resumed receiver gets:
    # with aiortc's 512 packets, the CI's lossy path (tests/host/test_real_networks.py) froze the camera for good.
    async with PeerRig() as rig:
        await rig.connect()
        _, pc = rig.made[-1]
        receivers = [transceiver.receiver for transceiver in pc.getTransceivers()]
        for index, capacity in media.VIDEO_JITTER_BUFFER_CAPACITY.items():
            assert receivers[index]._RTCRtpReceiver__jitter_buffer.capacity == capacity


async def test_a_source_the_peer_turns_off_and_on_again_resumes_after_a_gap():
    async with PeerRig(send_media=True) as rig:
        await rig.connect()
        rig.from_bot(SessionConnect(PC_ID))
        rig.from_bot(MediaCaptureSet(PC_ID, MediaSource.CAMERA, True))
        await rig.worker.wait_for(VideoIn, count=3)

        rig.client.send_signalling({"type": "trackStatus", "receiver_index": 1, "enabled": False})
        await rig.worker.wait_for(TrackStatusChange)
        rig.client.send_signalling({"type": "trackStatus", "receiver_index": 1, "enabled": True})
        await rig.worker.wait_for(TrackStatusChange, count=2)
        last = max(m.index for m in rig.worker.messages(VideoIn))
        [resumed, *_] = await rig.worker.wait_for(VideoIn, lambda m: m.index > last)
        assert resumed.index == last + 2


async def test_the_bot_output_tracks_tell_the_worker_the_codec_acknowledge_audio_and_ask_for_keyframes():
    async with PeerRig() as rig:
        await rig.connect()
        # Before its output track is open, bot audio is acknowledged at once.
        rig.from_bot(AudioOut(PC_ID, seq=0), OPUS_SILENCE)
        await rig.worker.wait_for(AudioOutAck)

        rig.from_bot(OutputOpen(PC_ID, audio=True, audio_auto_silence=True, video=True))
        assert await rig.worker.wait_for(VideoOutCodecSet) == [VideoOutCodecSet(PC_ID, "video/VP8")]
        rig.from_bot(AudioOut(PC_ID, seq=1), OPUS_SILENCE)
        await rig.worker.wait_for(AudioOutAck, count=2)
        assert rig.worker.messages(AudioOutAck) == [AudioOutAck(PC_ID, 0), AudioOutAck(PC_ID, 1)]

        # Video must start at a keyframe: the encoder is asked for one, and the frame is counted as dropped.
        rig.from_bot(VideoOut(PC_ID, index=1, keyframe=False), b"delta")
        assert await rig.worker.wait_for(VideoOutKeyframeRequest) == [VideoOutKeyframeRequest(PC_ID)]
        dropped = {"kind": "video", "reason": "output_track"}
        assert rig.metrics.registry.get_sample_value("smallwebrtc_frames_dropped_total", dropped) == 1
