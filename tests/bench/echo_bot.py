"""The reference server's echo bot, run by this host: the same pipeline, only the transport's import differs.

So the benchmark compares the transports and not two bots: the demo bot also
mirrors and annotates the picture and runs RTVI for the demo page, which the
reference's echo does not. Run with ``serve --bot tests.bench.echo_bot:bot``.
"""

from tests.bench.reference_server import run_bot
from transport import SmallWebRTCTransport


async def bot(runner_args):
    """Echo one peer's audio and video until it leaves (request data as the demo bot's)."""
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    await run_bot(
        runner_args.webrtc_connection,
        int(body.get("video_width", 640)),
        int(body.get("video_height", 480)),
        video=body.get("video", True) is not False,
        transport_class=SmallWebRTCTransport,
    )
