"""Fleet benchmark: controller overhead of one command on 500 agents.

    python -m tests.bench.bench_fleet [--hosts 500] [--rounds 3]

The agents run in a child process (tests/agent_pool.py, one agent per loopback address
127.0.X.Y, all on one port), so the controller's own peak RSS can be read from its
rusage. Figures, each the median of the rounds, next to same-run baselines:

1. wall time of `shoal run -o gather PATTERN -- true` over all hosts (default fan-out,
   and with the fan-out as wide as the fleet), against the same number of bare local
   spawns of `true` from asyncio (the floor: every agent must spawn a process);
2. the controller's peak RSS and CPU time (user+sys) for that run, against the same
   command on one host. CPU time separates the controller's own cost from the agents'
   (all 500 spawn their `true` in one process, which bounds the wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time

from tests.agent_pool import start_pool
from tests.bench.common import bare_spawns, line, raise_fd_limit
from tests.programs import installed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOAL = [installed("shoal")]  # the entry point as a user types it


def pattern_for(hosts: int) -> str:
    """Loopback addresses 127.0.X.Y, 250 per X, covering `hosts` of them."""
    full, rest = divmod(hosts, 250)
    parts = [f"127.0.[1-{full}].[1-250]"] if full else []
    if rest:
        parts.append(f"127.0.{full + 1}.[1-{rest}]")
    return ",".join(parts)


def start_agents(pattern: str) -> tuple[subprocess.Popen[bytes], int]:
    proc, port = start_pool(pattern)
    if not port:
        raise SystemExit("agent pool did not start")
    return proc, port


def timed_run(argv: list[str]) -> tuple[float, int, bytes, float]:
    """Run a command; return its wall time, peak RSS in KiB, stderr and CPU seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=ROOT)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... exited {proc.returncode}: {err.decode()[-500:]}")
    return elapsed, usage.ru_maxrss, err, usage.ru_utime + usage.ru_stime


def fleet_args(doc: str | None) -> argparse.Namespace:
    """--hosts and --rounds, as every fleet-sized benchmark takes them; the fd limit lifted for as many sockets."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit()
    return args


def main() -> None:
    args = fleet_args(__doc__)
    pattern = pattern_for(args.hosts)
    pool, port = start_agents(pattern)
    try:
        targets = ",".join(f"{p}:{port}" for p in pattern.split(","))
        one = f"127.0.1.1:{port}"
        runs: dict[str, list[tuple[float, int, float]]] = {"default": [], "wide": [], "one": []}
        bare: list[float] = []
        for _ in range(args.rounds):
            for key, extra in (("default", []), ("wide", ["-f", str(args.hosts)])):
                wall, rss, err, cpu = timed_run([*SHOAL, "run", "-n", "-o", "gather", *extra, targets, "--", "true"])
                if not err.startswith(f"shoal: {args.hosts} ok".encode()):
                    raise SystemExit(f"unexpected summary: {err.decode()}")
                runs[key].append((wall, rss, cpu))
            wall, rss, _, cpu = timed_run([*SHOAL, "run", "-n", "-o", "gather", one, "--", "true"])
            runs["one"].append((wall, rss, cpu))
            bare.append(asyncio.run(bare_spawns(args.hosts)))
    finally:
        assert pool.stdin is not None
        pool.stdin.close()
        pool.wait(60)

    def med(key: str, index: int) -> float:
        return statistics.median(r[index] for r in runs[key])

    floor = statistics.median(bare)
    print(f"{args.hosts} agents in one child process; median of {args.rounds} rounds; {os.cpu_count()} cpus")
    line(f"run -o gather true, {args.hosts} hosts, fanout 64", f"{med('default', 0):.2f} s", f"{floor:.2f} s",
         med("default", 0) / floor)
    line(f"run -o gather true, {args.hosts} hosts, fanout {args.hosts}", f"{med('wide', 0):.2f} s",
         f"{floor:.2f} s", med("wide", 0) / floor)
    line("  (baseline: bare local spawns of true)", "", "", 1.0)
    line("run -o gather true, 1 host (wall)", f"{med('one', 0):.2f} s", f"{floor:.2f} s", med("one", 0) / floor)
    for key, label in (("default", "fanout 64"), ("wide", f"fanout {args.hosts}")):
        line(f"controller peak RSS, {args.hosts} hosts, {label}", f"{med(key, 1) / 1024:.1f} MB",
             f"{med('one', 1) / 1024:.1f} MB", med(key, 1) / med("one", 1))
    print("  (RSS baseline: the same controller running on 1 host)")
    for key, label in (("default", "fanout 64"), ("wide", f"fanout {args.hosts}")):
        line(f"controller CPU (user+sys), {args.hosts} hosts, {label}", f"{med(key, 2):.2f} s",
             f"{med('one', 2):.2f} s", med(key, 2) / med("one", 2))
    print("  (CPU baseline: the same controller running on 1 host, mostly interpreter start-up)")


if __name__ == "__main__":
    main()
