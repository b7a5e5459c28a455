"""The agent's metrics snapshot, checked against what psutil reads on this machine."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import psutil
import pytest

import shoal.agent.metrics
from shoal.agent.metrics import Sampler, agent_version, run_sampler


@pytest.fixture
def snapshot() -> dict:
    sampler = Sampler()
    sampler.tick()
    return sampler.snapshot()


def test_snapshot_survives_a_json_round_trip(snapshot: dict) -> None:
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_identity_fields(snapshot: dict) -> None:
    assert snapshot["host"] == socket.gethostname()
    assert abs(snapshot["time"] - time.time()) < 60
    assert snapshot["agent_version"] == agent_version()
    assert snapshot["agent_rss"] > 0
    assert snapshot["boot_time"] == pytest.approx(psutil.boot_time(), abs=2)
    assert snapshot["uptime"] == pytest.approx(snapshot["time"] - snapshot["boot_time"])


def test_cpu_section_matches_this_machine(snapshot: dict) -> None:
    cpu = snapshot["cpu"]
    assert cpu["count"] == psutil.cpu_count()
    assert len(cpu["per_core"]) == len(psutil.cpu_times(percpu=True))
    assert all(0.0 <= p <= 100.0 for p in [cpu["percent"], *cpu["per_core"]])


def test_memory_and_swap_match_psutil(snapshot: dict) -> None:
    assert snapshot["memory"]["total"] == psutil.virtual_memory().total
    assert 0 < snapshot["memory"]["available"] <= snapshot["memory"]["total"]
    assert snapshot["swap"]["total"] == psutil.swap_memory().total
    assert 0.0 <= snapshot["swap"]["percent"] <= 100.0


def test_load_and_process_count(snapshot: dict) -> None:
    assert len(snapshot["load"]) == 3
    assert all(x >= 0 for x in snapshot["load"])
    assert snapshot["procs"] >= 1


def test_net_totals_are_the_counters(snapshot: dict) -> None:
    assert set(snapshot["net"]) == set(shoal.agent.metrics.NET_FIELDS)
    assert all(isinstance(v, int) and v >= 0 for v in snapshot["net"].values())


def test_disks_are_real_filesystems(snapshot: dict) -> None:
    disks = snapshot["disks"]
    assert disks, "expected at least one mounted filesystem"
    mounts = [d["mount"] for d in disks]
    assert len(mounts) == len(set(mounts))
    for disk in disks:
        assert disk["fstype"] not in shoal.agent.metrics.PSEUDO_FSTYPES
        assert disk["total"] > 0 and disk["used"] <= disk["total"] and disk["free"] <= disk["total"]
        assert 0.0 <= disk["percent"] <= 100.0
    root = psutil.disk_usage("/")
    if "/" in mounts:
        assert next(d for d in disks if d["mount"] == "/")["total"] == root.total


def test_cpu_figures_before_the_first_tick_are_since_boot() -> None:
    sampler = Sampler()
    cpu = sampler.snapshot()["cpu"]
    assert sampler.ticks == 0
    times = psutil.cpu_times()
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    busy = total - times.idle - getattr(times, "iowait", 0.0)
    assert cpu["percent"] == pytest.approx(busy / total * 100, abs=1.0)
    assert len(cpu["per_core"]) == cpu["count"]


def test_tick_measures_cpu_burned_since_the_previous_tick() -> None:
    sampler = Sampler()
    sampler.tick()
    start = time.process_time()
    while time.process_time() - start < 0.2:
        pass
    sampler.tick()
    assert sampler.ticks >= 1
    assert sampler.snapshot()["cpu"]["percent"] > 0.0


def test_snapshots_between_ticks_are_cheap_and_stable() -> None:
    sampler = Sampler()
    sampler.tick()
    cpus = [sampler.snapshot()["cpu"] for _ in range(100)]
    assert all(c == cpus[0] for c in cpus)


def test_unreadable_sources_become_null(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise psutil.AccessDenied()

    def unreadable(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    sampler = Sampler()
    monkeypatch.setattr(psutil, "swap_memory", denied)
    monkeypatch.setattr(psutil, "net_io_counters", denied)
    monkeypatch.setattr(psutil, "disk_usage", unreadable)
    snap = sampler.snapshot()
    assert snap["swap"] is None and snap["net"] is None
    assert snap["disks"] == []
    assert snap["memory"]["total"] == psutil.virtual_memory().total
    json.dumps(snap)


def test_unreadable_cpu_times_keep_the_last_window(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = Sampler()
    before = sampler.snapshot()["cpu"]

    def gone(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(psutil, "cpu_times", gone)
    sampler.tick()
    assert sampler.ticks == 0
    assert sampler.snapshot()["cpu"] == before


async def test_run_sampler_ticks_until_cancelled() -> None:
    sampler = Sampler()
    task = asyncio.create_task(run_sampler(sampler, interval=0.01))

    async def until_ticked() -> None:
        while sampler.ticks < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(until_ticked(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_sampler_rejects_a_spinning_interval() -> None:
    with pytest.raises(ValueError):
        await run_sampler(Sampler(), interval=0)
