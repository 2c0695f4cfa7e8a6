"""The worker process: joins an engine, runs one session actor per bot, and hosts the bots.

``python -m workers`` runs one (``smallwebrtc-host worker``). A bot reaches its
peer through the facade in ``transport``; the worker and the engine share only
``engine.common``.
"""

from workers.memory import limit_blas_threads

# Before anything of the worker's imports numpy or OpenCV, which start OpenBLAS's threads at import.
limit_blas_threads()
