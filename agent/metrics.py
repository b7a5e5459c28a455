"""Host metrics for the agent: a cheap snapshot of the machine that never raises.

`Sampler.snapshot()` returns a JSON-serialisable dict, the body of a metrics reply:

    host           str    socket.gethostname()
    time           float  the agent's wall clock, seconds since the epoch
    agent_version  str    installed shoal version, "0+unknown" when not installed
    agent_rss      int    resident memory of the agent process, bytes
    boot_time      float  when the host booted, seconds since the epoch
    uptime         float  time - boot_time, seconds
    cpu            {percent: float, per_core: [float, ...], count: int}
    load           [float, float, float]   1, 5 and 15 minute load averages
    memory         {total: int, available: int, used: int, percent: float}   bytes
    swap           {total: int, used: int, percent: float}                   bytes
    disks          [{mount: str, device: str, fstype: str,
                     total: int, used: int, free: int, percent: float}, ...]
    net            {bytes_sent, bytes_recv, packets_sent, packets_recv,
                    errin, errout, dropin, dropout: int}   totals since boot
    procs          int    number of processes

Any section the agent cannot read (permissions, a platform without it, a
vanished /proc entry) is `null` instead of failing the whole reply; a mount
whose usage cannot be read is left out of `disks`.

CPU percentages describe the window between the last two `tick()` calls, so a
snapshot never waits for a measurement. Until the first tick has completed a
window they come from one non-blocking read of the kernel's counters taken when
the sampler was built, and are therefore averages since boot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from importlib import metadata
from typing import Any, Callable, TypeVar

import psutil

from shoal.hostio.tasks import TaskSet

__all__ = ["HostMetrics", "Sampler", "run_sampler", "agent_version"]

log = logging.getLogger("shoal.agent.metrics")

T = TypeVar("T")

#: Filesystem types that hold no user data (kernel views, memory-backed scratch)
#: or are always 100% full by design (read-only images); reporting them would
#: only make the "fullest filesystem" figure meaningless.
PSEUDO_FSTYPES = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
    "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "iso9660", "mqueue",
    "nsfs", "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs",
    "squashfs", "sysfs", "tmpfs", "tracefs",
})

#: What a read of host state may legitimately raise: it is reported as `null`.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, psutil.Error, ValueError, NotImplementedError)

NET_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
              "errin", "errout", "dropin", "dropout")

# One core's counters reduced to what a percentage needs: (busy seconds, total seconds).
CoreTimes = tuple[float, float]


def agent_version() -> str:
    """Return the installed shoal version, or "0+unknown" when run from a checkout."""
    try:
        return metadata.version("shoal")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _maybe(read: Callable[[], T], what: str) -> T | None:
    """Call `read`, turning an unreadable source into None so one gap never fails a snapshot."""
    try:
        return read()
    except READ_ERRORS as exc:
        log.debug("cannot read %s: %s", what, exc)
        return None


def _core_times() -> list[CoreTimes]:
    """Read (busy, total) seconds per core since boot."""
    cores = []
    for t in psutil.cpu_times(percpu=True):
        # Linux counts guest time inside user/nice as well; drop it so it is not counted twice.
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        # iowait is a CPU doing nothing while waiting for a disk: idle, not busy.
        busy = total - t.idle - getattr(t, "iowait", 0.0)
        cores.append((busy, total))
    return cores


def _percent(busy: float, total: float) -> float:
    """Busy share of `total` in percent, clamped against counter jitter."""
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, busy / total * 100.0)), 1)


def _cpu_window(before: list[CoreTimes], after: list[CoreTimes]) -> tuple[float, list[float]] | None:
    """Overall and per-core busy percent between two readings; None when no time passed.

    A reading of a different length (a core went on- or offline) cannot be
    compared core by core, so the window restarts from boot.
    """
    if len(before) != len(after):
        before = [(0.0, 0.0)] * len(after)
    deltas = [(b2 - b1, t2 - t1) for (b1, t1), (b2, t2) in zip(before, after)]
    total = sum(t for _, t in deltas)
    if total <= 0:
        return None
    return _percent(sum(b for b, _ in deltas), total), [_percent(b, t) for b, t in deltas]


def _disk(part: Any) -> dict[str, Any]:
    """Describe one mounted filesystem; raises OSError when its usage is unreadable."""
    usage = psutil.disk_usage(part.mountpoint)
    return {"mount": part.mountpoint, "device": part.device, "fstype": part.fstype,
            "total": usage.total, "used": usage.used, "free": usage.free,
            "percent": round(usage.percent, 1)}


def _disks() -> list[dict[str, Any]]:
    """Real filesystems, each mount once (bind mounts repeat), skipping unreadable ones.

    We list all mounts and filter out pseudo types ourselves instead of asking
    psutil for "physical" ones only, because that would drop an overlay root
    inside a container. statvfs on a hung network mount can still block.
    """
    disks: dict[str, dict[str, Any]] = {}
    for part in psutil.disk_partitions(all=True):
        if part.fstype in PSEUDO_FSTYPES or part.mountpoint in disks:
            continue
        disk = _maybe(functools.partial(_disk, part), f"disk usage of {part.mountpoint}")
        if disk is not None and disk["total"] > 0:
            disks[part.mountpoint] = disk
    return list(disks.values())


def _memory() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {"total": vm.total, "available": vm.available, "used": vm.used, "percent": vm.percent}


def _swap() -> dict[str, Any]:
    sw = psutil.swap_memory()
    return {"total": sw.total, "used": sw.used, "percent": sw.percent}


def _net() -> dict[str, int]:
    counters = psutil.net_io_counters()
    return {name: int(getattr(counters, name)) for name in NET_FIELDS}


def _load() -> list[float]:
    return [round(x, 2) for x in psutil.getloadavg()]


class Sampler:
    """Keeps a recent CPU window so that `snapshot()` is cheap and never waits.

    We difference `psutil.cpu_times()` ourselves rather than calling
    `psutil.cpu_percent(interval=None)`: that keeps its previous reading in
    psutil's module state, shared by every caller on the thread, so two
    samplers (several agents in one test process) would shorten each other's
    windows.
    """

    def __init__(self) -> None:
        self._process = _maybe(psutil.Process, "own process")
        self._version = agent_version()
        self._last = _maybe(_core_times, "cpu times") or []
        self._percent, self._per_core = _cpu_window([], self._last) or (0.0, [0.0] * len(self._last))
        self._ticks = 0

    @property
    def ticks(self) -> int:
        """How many CPU windows have been measured; 0 means figures are still since boot."""
        return self._ticks

    def tick(self) -> None:
        """Close the current CPU window and start the next; cheap and synchronous.

        Call it about once a second. A tick too soon after the last (no clock
        tick elapsed) keeps the previous figures instead of reporting zeros.
        """
        now = _maybe(_core_times, "cpu times")
        window = _cpu_window(self._last, now) if now else None
        if now is None or window is None:
            return
        self._last = now
        self._percent, self._per_core = window
        self._ticks += 1

    def snapshot(self) -> dict[str, Any]:
        """Describe the host now; see the module docstring for the schema."""
        now = time.time()
        boot = _maybe(psutil.boot_time, "boot time")
        return {
            "host": socket.gethostname(),
            "time": now,
            "agent_version": self._version,
            "agent_rss": _maybe(self._rss, "agent rss"),
            "boot_time": boot,
            "uptime": None if boot is None else max(0.0, now - boot),
            "cpu": self._cpu(),
            "load": _maybe(_load, "load average"),
            "memory": _maybe(_memory, "memory"),
            "swap": _maybe(_swap, "swap"),
            "disks": _maybe(_disks, "mounts") or [],
            "net": _maybe(_net, "network counters"),
            "procs": _maybe(lambda: len(psutil.pids()), "process list"),
        }

    def _cpu(self) -> dict[str, Any]:
        count = _maybe(psutil.cpu_count, "cpu count") or len(self._per_core)
        return {"percent": self._percent, "per_core": list(self._per_core), "count": count}

    def _rss(self) -> int:
        if self._process is None:
            raise ValueError("own process handle unavailable")
        return int(self._process.memory_info().rss)


async def run_sampler(sampler: Sampler, interval: float = 1.0) -> None:
    """Tick `sampler` every `interval` seconds until cancelled.

    Raises:
        ValueError: `interval` is not positive (it would spin the event loop).
    """
    if interval <= 0:
        raise ValueError(f"sampler interval must be positive, got {interval}")
    while True:
        sampler.tick()
        await asyncio.sleep(interval)


class HostMetrics:
    """The agent's sampler, ticking from the first METRICS request on, so an idle agent never samples."""

    def __init__(self, loops: TaskSet) -> None:
        self._loops = loops  # cancelled at agent close
        self._sampler: Sampler | None = None

    def snapshot(self) -> dict[str, Any]:
        if self._sampler is None:
            self._sampler = Sampler()
            self._loops.spawn(run_sampler(self._sampler), name="metrics-sampler")
        return self._sampler.snapshot()
