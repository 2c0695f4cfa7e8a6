"""What the engine and the worker processes share; it imports nothing else of this project.

- ``protocol``: every message of the engine-worker link (the one wire schema), and the constants both ends agree on.
- ``link``: the ZeroMQ sockets of the link and the outbox that feeds each one.
- ``mailbox``: the bounded mailbox every actor reads, with its drop policies.
- ``keyframes``: the rule for encoded video that crosses a bounded queue.
- ``pacing``: audio handed to an aiortc sender at wall-clock pace.
- ``diagnostics``: what a long-running process still holds, counted when its operator asks.
- ``settings``: the host's configuration, read by both processes.
"""
