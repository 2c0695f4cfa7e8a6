"""Media work in the worker, between the engine's encoded frames and a Pipecat bot.

The engine hands the worker the peer's media as encoded frames and sends the
bot's media as the worker encoded it; it only depacketizes and packetizes.
Everything in between happens here, one role per module:

- ``codecs``: ``MediaDecoder`` decodes the peer's frames (``engine.common.keyframes.is_keyframe``
  tells which decode on their own); ``VideoEncoder`` and ``OpusEncoder`` encode the
  bot's video and audio (``VIDEO_TIME_BASE`` is the video encoder's clock).
- ``colour``: ``planes_to_rgb`` turns decoded pictures into the bot's packed
  RGB (``FORMAT_CONVERSIONS`` lists the formats it takes), ``rgb_to_i420`` the
  bot's RGB(A) images into what the video encoder takes.
- ``framing``: ``AudioFramer`` resamples PCM and cuts it into exact chunks,
  for the bot's input frames and for the Opus encoder.
"""
