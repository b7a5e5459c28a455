"""Relay benchmark: `true` on 500 agents directly, and through one gateway, in the same run.

    python -m tests.bench.bench_relay [--hosts 500] [--rounds 3]

The targets run in one child process (tests/agent_pool.py, one agent per loopback
address 127.0.X.Y, all on one port); the gateway is a `shoal-agent` of its own on
127.0.0.1, so its CPU and memory can be read apart. Figures, each the median of the
rounds, next to same-run baselines:

1. wall time of `shoal run -o gather -n --via GW PATTERN -- true` over all hosts,
   against the same run without `--via` (the issue's aim: within 1.3x), at the
   default fan-out and with the fan-out as wide as the fleet;
2. the gateway's CPU time (user+sys) per target, against the controller's own CPU per
   target in the direct run (one end of each target's connection, as the gateway is);
3. the gateway's peak RSS above its idle RSS per target relayed at once (fan-out as
   wide as the fleet: every stream open together), against the controller's peak RSS
   per host in the direct run of the same width.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil

from tests.agent_pool import stop_pool
from tests.bench.bench_fleet import SHOAL, fleet_args, pattern_for, start_agents, timed_run
from tests.bench.common import free_port, line as _line, start_agent


class Sampler:
    """The peak RSS of a process while a run goes on, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)



def line(name: str, ours: str, base: str, ratio: float) -> None:
    _line(name, ours, base, ratio, width=52)


def main() -> None:
    args = fleet_args(__doc__)
    pattern = pattern_for(args.hosts)
    pool, port = start_agents(pattern)
    gw_port = free_port()
    gateway = start_agent(gw_port, "--max-connections", "4096")
    gw = psutil.Process(gateway.pid)
    runs: dict[str, list[tuple[float, float, float]]] = {}  # wall s, CPU s, RSS bytes (peak over idle)
    try:
        targets = ",".join(f"{p}:{port}" for p in pattern.split(","))
        base = [*SHOAL, "run", "-n", "-o", "gather"]
        # Warm the gateway up once: its first relay imports what relaying needs.
        timed_run([*base, "--via", f"127.0.0.1:{gw_port}", f"127.0.1.1:{port}", "--", "true"])
        idle = gw.memory_info().rss
        for _ in range(args.rounds):
            for width in ("64", str(args.hosts)):
                wall, rss, err, ctl_cpu = timed_run([*base, "-f", width, targets, "--", "true"])
                check(err, args.hosts)
                runs.setdefault(f"direct {width}", []).append((wall, ctl_cpu, rss * 1024))
                before = cpu(gw)
                with Sampler(gateway.pid) as sampler:
                    wall, _, err, _ = timed_run([*base, "-f", width, "--via", f"127.0.0.1:{gw_port}", targets,
                                                 "--", "true"])
                check(err, args.hosts)
                runs.setdefault(f"relay {width}", []).append((wall, cpu(gw) - before, sampler.peak - idle))
            one_wall, one_rss, _, one_cpu = timed_run([*base, f"127.0.1.1:{port}", "--", "true"])
            runs.setdefault("one", []).append((one_wall, one_cpu, one_rss * 1024))
    finally:
        stop_pool(pool)
        gateway.terminate()
        gateway.wait(30)

    def med(key: str, index: int) -> float:
        return statistics.median(r[index] for r in runs[key])

    n = args.hosts
    print(f"{n} agents in one child process, gateway in another; median of {args.rounds} rounds; "
          f"{os.cpu_count()} cpus")
    for width in ("64", str(n)):
        line(f"run -o gather true, {n} hosts via gateway, fanout {width}", f"{med(f'relay {width}', 0):.2f} s",
             f"{med(f'direct {width}', 0):.2f} s", med(f"relay {width}", 0) / med(f"direct {width}", 0))
    print("  (baseline: the same run, direct; the aim is a ratio within 1.3)")
    # The controller's CPU includes its interpreter start-up: count only what the hosts add.
    startup = med("one", 1)
    for width in ("64", str(n)):
        ours = med(f"relay {width}", 1) / n
        theirs = max(med(f"direct {width}", 1) - startup, 1e-9) / n
        line(f"gateway CPU per target, fanout {width}", f"{ours * 1e3:.2f} ms", f"{theirs * 1e3:.2f} ms",
             ours / theirs)
    print("  (baseline: the controller's CPU per host in the direct run, less its start-up)")
    ours = med(f"relay {n}", 2) / n
    theirs = max(med(f"direct {n}", 2) - med("one", 2), 1) / n
    line(f"gateway peak RSS over idle per target, {n} at once", f"{ours / 1024:.1f} KiB",
         f"{theirs / 1024:.1f} KiB", ours / theirs)
    print(f"  (baseline: the controller's peak RSS per host, direct, {n} at once, over its 1-host run; "
          f"gateway idle RSS {idle / 2**20:.1f} MiB)")


def check(err: bytes, hosts: int) -> None:
    if not err.startswith(f"shoal: {hosts} ok".encode()):
        raise SystemExit(f"unexpected summary: {err.decode()[-500:]}")


if __name__ == "__main__":
    main()
