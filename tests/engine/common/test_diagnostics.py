"""Counting what a process still holds: instances live now, and those a full collection could not free."""

import gc

from engine.common.diagnostics import live_objects


class Kept:
    pass


class InACycle:
    def __init__(self):
        self.me = self


async def test_live_and_kept_instances_tasks_and_threads():
    kept = Kept()
    gc.disable()
    try:
        InACycle()
        report = live_objects(("Kept", "InACycle"))
    finally:
        gc.enable()
    assert report.startswith("Kept=1/1 InACycle=1/0 ")
    fields = dict(item.split("=") for item in report.split())
    assert int(fields["tasks"]) >= 1 and int(fields["threads"]) >= 1
    del kept
