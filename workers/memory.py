"""A worker's memory: native threads kept to one per job, and ended sessions' memory given back.

Threads: FFmpeg sizes its automatic thread pools (decoders left at
``thread_count`` 0, and every filter graph, which is what PyAV's
``AudioResampler`` is) by the machine's cores, and OpenBLAS (numpy's, and
OpenCV's own copy) starts a thread per core at import. In a worker, one per
core, those threads only add a stack and a malloc arena each, and spin
against the other workers: OpenBLAS starts none (``limit_blas_threads``), and
a session's codecs and resamplers each run on one thread (``limit_ffmpeg_threads``).

Arenas: glibc gives each thread that allocates an arena of its own (up to 8
per core), and every arena keeps the free pages between its blocks. A
session's pictures (about 1 MB each, several per frame) are made and freed on
the event loop and the executor's threads, so each arena keeps its own high
water mark of them: with two arenas (``limit_malloc_arenas``) a worker held
about 9 MB less per 640x480 video session, with half the page faults (median
of three paired runs of tests/bench/worker_memory.py).

Ended sessions: a Pipecat pipeline is made of reference cycles (processors
link to their neighbours), so an ended session's pipeline, with the frames and
buffers it holds, waits for a full garbage collection, which CPython runs more and more
rarely as the heap grows. Once it is freed, glibc keeps most of that memory,
spread over its arenas between blocks still in use, unless asked to give
free pages back (``malloc_trim``).
"""

import ctypes
import gc
import os
import sys
from pathlib import Path


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None  # not glibc (musl, macOS): their allocators give pages back on their own


_MALLOC_TRIM = _malloc_trim()
# glibc's mallopt() parameter for the most arenas its allocator makes.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_blas_threads() -> None:
    """Have OpenBLAS start no threads of its own; call before numpy or OpenCV is imported.

    An operator who wants them sets ``OPENBLAS_NUM_THREADS`` (or
    ``OMP_NUM_THREADS``, which OpenBLAS reads too) for the worker.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _loaded_libraries(name: str) -> set[str]:
    """The paths of the shared libraries this process has mapped whose file name starts with ``name``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps}
    except OSError:
        return set()
    return {path for path in paths if Path(path).name.startswith(name)}


def limit_ffmpeg_threads() -> None:
    """Make FFmpeg's automatic thread counts one thread, in this process (PyAV must be imported).

    Pools FFmpeg sizes itself (a codec's with ``thread_count`` 0, a filter
    graph's) then start no threads; a codec given its own ``thread_count``
    keeps it. Every FFmpeg loaded by then is told (PyAV's; OpenCV's wheel
    bundles another, for its video I/O, which the host does not use).
    """
    if "av" not in sys.modules:
        raise RuntimeError("limit_ffmpeg_threads() needs PyAV imported (its libavutil loaded)")
    # None found: FFmpeg linked statically, or no /proc; it keeps its own counts.
    for path in _loaded_libraries("libavutil"):
        ctypes.CDLL(path).av_cpu_force_count(1)


def limit_malloc_arenas() -> None:
    """Have glibc's allocator make at most ``MALLOC_ARENAS`` arenas, unless the operator set ``MALLOC_ARENA_MAX``.

    Call it before the process starts threads: a thread keeps the arena it
    was given.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return  # not glibc
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def freeze_startup_objects() -> None:
    """Keep every object alive now (modules, the bot's imports) out of later collections.

    They live as long as the process; frozen, a full collection only goes
    through what sessions made, and takes milliseconds instead of tens.
    """
    gc.collect()
    gc.freeze()


def release_ended_sessions() -> None:
    """Free what ended sessions left in reference cycles, and give the free heap pages back (glibc)."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
