"""The engine process: HTTP signaling, one actor per WebRTC peer, the workers' registry and placement.

``engine.common`` is what the engine and the worker processes share: the wire
schema and the link between them, mailboxes, the keyframe rule, paced audio
and the settings. Nothing else of the engine is imported by the workers or by
the facade a bot imports (``transport``).
"""
