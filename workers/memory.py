"""Giving an ended session's memory back to the system, so a worker left running does not grow.

A Pipecat pipeline is made of reference cycles (processors link to their
neighbours), so an ended session's pipeline, with the frames and buffers it
holds, waits for a full garbage collection, which CPython runs more and more
rarely as the heap grows. Once it is freed, glibc keeps most of that memory,
spread over its arenas between blocks still in use, unless asked to give
free pages back (``malloc_trim``).
"""

import ctypes
import gc


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None  # not glibc (musl, macOS): their allocators give pages back on their own


_MALLOC_TRIM = _malloc_trim()


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
