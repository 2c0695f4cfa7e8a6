"""A worker's memory: what it leaves unimported until a session needs it, and the native threads it does not start."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None):
    """Run ``code`` in a fresh interpreter started as a worker is (``-P``, from the repository); its last line, as JSON.

    ``env`` is its whole environment (default: this one's).
    """
    done = subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=REPO,
        env=os.environ if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# What workers/__main__.py imports and does before its event loop runs, with the demo bot loaded.
WORKER_STARTUP = """
import json, sys
import workers
from transport import pipecat_modules
from workers.__main__ import main
from workers.worker import load_bot
pipecat_modules.install()
load_bot("workers.demo_bot:bot")
"""


def test_a_worker_with_the_demo_bot_has_not_imported_opencv_before_a_session_has_video():
    loaded = run_python(WORKER_STARTUP + "print(json.dumps({'cv2': 'cv2' in sys.modules, 'av': 'av' in sys.modules}))")
    assert loaded == {"cv2": False, "av": True}


def test_opencv_is_imported_by_the_first_picture_converted_with_one_thread():
    loaded = run_python(
        WORKER_STARTUP
        + """
from transport.media.colour import rgb_to_i420
rgb_to_i420(bytes(4 * 2 * 3), 4, 2, "RGB")
import cv2
print(json.dumps({"cv2": "cv2" in sys.modules, "threads": cv2.getNumThreads()}))
"""
    )
    assert loaded == {"cv2": True, "threads": 1}


def test_the_workers_package_keeps_openblas_from_starting_threads_unless_the_operator_asked():
    code = "import json, os, workers; print(json.dumps(os.environ.get('OPENBLAS_NUM_THREADS')))"
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    assert run_python(code, env=environ) == "1"
    assert run_python(code, env={**environ, "OPENBLAS_NUM_THREADS": "4"}) == "4"


def test_ffmpeg_pools_it_sizes_itself_start_no_threads_once_limited():
    # A resampler is an FFmpeg filter graph: unlimited, it starts a pool sized by the machine's cores.
    counted = run_python(
        """
import json, os
import av, numpy as np
from workers.memory import limit_ffmpeg_threads

def resampler_threads():
    before = len(os.listdir("/proc/self/task"))
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate = 48000
    resampler.resample(frame)
    return len(os.listdir("/proc/self/task")) - before, resampler

limit_ffmpeg_threads()
started, _kept = resampler_threads()
print(json.dumps({"started": started}))
"""
    )
    assert counted == {"started": 0}


def test_glibcs_allocator_makes_at_most_two_arenas_unless_the_operator_said_otherwise():
    # malloc_info() lists each arena as a <heap nr=...>; eight threads that allocate would each get one.
    arenas = """
import ctypes, json, threading
from workers.memory import limit_malloc_arenas
{limit}
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.open_memstream.restype = ctypes.c_void_p
libc.free.argtypes = libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
def allocate():
    blocks = [libc.malloc(200_000) for _ in range(4)]
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(json.dumps(buffer.value.decode().count("<heap nr=")))
"""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert run_python(arenas.format(limit="limit_malloc_arenas()"), env=environ) <= 2
    assert run_python(arenas.format(limit=""), env=environ) > 2
    assert run_python(arenas.format(limit="limit_malloc_arenas()"), env={**environ, "MALLOC_ARENA_MAX": "4"}) > 2
