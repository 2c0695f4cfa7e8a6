"""What a long-running process still holds: counted when its operator asks (SIGUSR1), to see that ended sessions are freed."""

import asyncio
import gc
import threading


def live_objects(type_names: tuple[str, ...]) -> str:
    """``name=live/kept`` of these classes' instances: live now, and kept once a full collection freed the cycles.

    Also the asyncio tasks and the threads.
    """
    live = _count(type_names)
    gc.collect()
    kept = _count(type_names)
    counts = [f"{name}={live[name]}/{kept[name]}" for name in type_names]
    return " ".join([*counts, f"tasks={len(asyncio.all_tasks())}", f"threads={threading.active_count()}"])


def _count(type_names: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(type_names, 0)
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in counts:
            counts[name] += 1
    return counts
