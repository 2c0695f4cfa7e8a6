"""``python -m tests.support.pipecat_runner BOT_FILE ARGS...``: ``python BOT_FILE ARGS...`` with WebRTC on loopback only.

A bot file's ``__main__`` block starts Pipecat's development runner, whose
peers gather ICE host candidates on every interface but loopback. The tests
keep all traffic on 127.0.0.1, so this process gathers there only
(``engine.ice.restrict_host_addresses``) and then runs the file as
``__main__``, with ``BOT_FILE ARGS...`` as its command line, as Python would.
One difference: ``sys.path[0]`` is the directory this runs in, not the file's.
"""

import runpy
import sys

from engine.ice import restrict_host_addresses

if __name__ == "__main__":
    bot_file, *args = sys.argv[1:]
    restrict_host_addresses(["127.0.0.1"])
    sys.argv = [bot_file, *args]
    runpy.run_path(bot_file, run_name="__main__")
