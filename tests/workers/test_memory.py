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
