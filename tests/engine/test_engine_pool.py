"""The engine processes of a host with several engines, run for real: started, found by pc_id, taken in turn, restarted, stopped."""

import asyncio
import os
import signal

import httpx
import pytest

from engine import processes
from engine.common.settings import HostSettings
from engine.engine_pool import EnginePool, settings_environment, shard_endpoint
from tests.support.engines import running_pool
from tests.support.link import until


def test_each_engine_gets_its_own_worker_endpoint():
    assert shard_endpoint("", 1) == ""
    assert shard_endpoint("tcp://0.0.0.0:7861", 2) == "tcp://0.0.0.0:7863"
    assert shard_endpoint("ipc:///run/host/engine.sock", 1) == "ipc:///run/host/engine.sock.1"


def test_engines_resolve_the_same_settings(monkeypatch):
    settings = HostSettings(
        workers=3, engines=2, ice_servers=["stun:stun.example.org:3478"], ice_host_addresses=["127.0.0.1"], esp32=True
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert HostSettings() == settings


def test_more_engines_than_workers_is_refused():
    with pytest.raises(ValueError, match="engines: 3 engines would share 2 local workers"):
        HostSettings(workers=2, engines=3)


async def test_the_local_workers_are_shared_out_among_the_engines():
    async with httpx.AsyncClient() as client:
        pool = EnginePool(HostSettings(engines=3, workers=7), None, client)
    assert [shard.workers for shard in pool.shards] == [3, 2, 2]
    assert len({shard.port for shard in pool.shards}) == 3
    assert pool.live() == [] and pool.owner("any-pc") is None and pool.in_turn() == []


async def test_each_engine_serves_and_owns_the_peers_its_id_starts():
    async with running_pool() as (pool, client):
        live = pool.live()
        assert len(live) == 2 and len({shard.engine_id for shard in live}) == 2
        for shard in live:
            assert (await client.get(f"{shard.url}/workers")).json()["engine_id"] == shard.engine_id
            assert pool.owner(f"{shard.engine_id}-0123abcd") is shard
        assert pool.owner("nobody-0123abcd") is None and pool.owner(None) is None
        firsts = [pool.in_turn()[0] for _ in range(4)]
        assert firsts[0] is not firsts[1] and firsts[:2] == firsts[2:]
        engine_processes = [shard.slot.process for shard in live]
    assert all(process.returncode is not None for process in engine_processes)


async def test_an_engine_that_crashes_is_restarted_and_the_other_carries_on(monkeypatch):
    monkeypatch.setattr(processes, "RESTART_DELAY_FIRST_S", 0.1)
    async with running_pool() as (pool, _):
        victim, other = pool.shards
        crashed_id, other_id = victim.engine_id, other.engine_id
        os.kill(victim.slot.process.pid, signal.SIGKILL)
        await until(lambda: victim.engine_id not in ("", crashed_id), timeout=30)
        assert other.engine_id == other_id
        assert pool.owner(f"{victim.engine_id}-0123abcd") is victim


async def test_engines_that_drain_and_stop_are_not_restarted():
    async with running_pool() as (pool, _):
        all_ended = asyncio.Event()
        pool.on_all_ended = all_ended.set
        pool.signal_all(signal.SIGTERM)
        await asyncio.wait_for(all_ended.wait(), 30)
        assert [shard.slot.process.returncode for shard in pool.shards] == [0, 0]
        assert pool.live() == []
