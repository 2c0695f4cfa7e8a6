"""Nothing under tests/bench is a test: the benchmark runs only by hand (see README.md)."""

collect_ignore_glob = ["*.py"]
