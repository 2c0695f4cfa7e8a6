"""Group py-spy raw stacks of the engine's event-loop thread by area (what to optimize next).

Run: ``python -m tests.bench.profile_areas tests/bench/results/logs-*/engine-<pid>.pyspy.txt``
(the files ``run.py --profile`` writes). First matching area wins, in the order below.
"""

import sys
from collections import Counter

AREAS = [
    ("UDP sendto (aioice StunProtocol.send_data)", "StunProtocol.send_data"),
    ("SRTP protect", "Session.protect"),
    ("SRTP unprotect", "Session.unprotect"),
    ("RTP send: audio level (compute_audio_level_dbov)", "compute_audio_level_dbov"),
    ("EncodedVideoTrack.recv (the worker's packets to the sender)", "EncodedVideoTrack.recv"),
    ("EncodedAudioTrack.recv", "EncodedAudioTrack.recv"),
    ("RTP send: rest (packetize, header ext, history)", "RTCRtpSender._run_rtp"),
    ("RTP receive: encoded frames handed on (tap, PeerMedia._hand_on, outbox)", "_EncodedFrameTap.put"),
    ("RTP receive: jitter buffer", "JitterBuffer.add"),
    ("RTP receive: remote bitrate estimator", "RemoteBitrateEstimator"),
    ("RTP receive: rest", "RTCRtpReceiver._handle_rtp_packet"),
    ("RTP/RTCP demux (RTCDtlsTransport.__run)", "RTCDtlsTransport.__run"),
    ("PeerActor.run (worker messages, acks, ticks)", "PeerActor.run"),
    ("IPC send: Outbox.pump -> zmq", "Outbox.pump"),
    ("IPC receive: Engine._receive", "Engine._receive"),
    ("zmq.asyncio event handling", "_AsyncSocket._handle_events"),
    ("RTCP loops", "_run_rtcp"),
    ("SCTP / data channel", "rtcsctptransport"),
    ("HTTP (uvicorn)", "uvicorn"),
]


def areas(path: str, thread: str = "MainThread") -> tuple[int, int, Counter]:
    total = selected = 0
    found: Counter = Counter()
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        if thread not in stack.split(";")[0]:
            continue
        selected += n
        for name, key in AREAS:
            if key in stack:
                found[name] += n
                break
        else:
            leaf = stack.split(";")[-1]
            found["uvloop/Cython internals" if leaf.startswith("Runner.run") else "other: " + leaf] += n
    return total, selected, found


def main() -> None:
    for path in sys.argv[1:]:
        total, selected, found = areas(path)
        print(f"{path}: {total} samples, {selected} on the event loop thread ({100 * selected / max(total, 1):.1f}%)")
        for name, n in found.most_common(25):
            print(f"{100 * n / max(selected, 1):6.1f}%  {name}")


if __name__ == "__main__":
    main()
