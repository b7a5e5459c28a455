"""Output benchmark: the controller's peak RSS when gather mode meets a lot of output.

    python -m tests.bench.bench_output [--hosts 500] [--mb 100] [--uncapped-hosts 3]

The agents run in a child process (tests/agent_pool.py, one agent per loopback address,
all on one port), so the controller's own peak RSS can be read from its rusage. Every
host prints the same MB megabytes of text lines. Figures, next to a same-run baseline
(the same controller running `true` on one host: interpreter, imports, one connection):

1. `run -o gather` on HOSTS hosts with the default --max-output (16M): memory stays
   bounded by the cap (the head stored once, a tail ring per running host) and the
   output in flight (controller/fleet.py FLEET_OUTPUT_BUDGET), not by hosts x output;
2. the same with `--max-output none` on UNCAPPED hosts, which is what gather did
   before the cap (it held every byte); kept to a few hosts so it fits in memory.
"""

from __future__ import annotations

import argparse
import os

from tests.bench.bench_fleet import SHOAL, line, pattern_for, start_agents, timed_run
from tests.bench.common import raise_fd_limit


def output_command(mb: int) -> str:
    """Text lines, the same on every host, `mb` megabytes in all."""
    return f"yes 'shoal bench output: the same line of text on every host' | head -c {mb * 1000 * 1000}"


def gather_rss(targets: str, command: str, *extra: str) -> tuple[float, int, bytes]:
    """Wall time, controller peak RSS (KiB) and stderr of one gather run."""
    wall, rss, err, _ = timed_run([*SHOAL, "run", "-n", "-o", "gather", *extra, targets, "--", command])
    return wall, rss, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--uncapped-hosts", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit()
    pattern = pattern_for(max(args.hosts, args.uncapped_hosts))
    pool, port = start_agents(pattern)
    try:
        everyone = ",".join(f"{p}:{port}" for p in pattern_for(args.hosts).split(","))
        few = ",".join(f"{p}:{port}" for p in pattern_for(args.uncapped_hosts).split(","))
        _, base, _ = gather_rss(f"127.0.1.1:{port}", "true")
        wall, capped, err = gather_rss(everyone, output_command(args.mb))
        if not err.startswith(f"shoal: {args.hosts} ok".encode()):
            raise SystemExit(f"unexpected summary: {err.decode()[-300:]}")
        uwall, uncapped, _ = gather_rss(few, output_command(args.mb), "--max-output", "none")
    finally:
        assert pool.stdin is not None
        pool.stdin.close()
        pool.wait(120)
    print(f"{args.hosts} agents in one child process, {args.mb} MB of lines each; {os.cpu_count()} cpus")
    line(f"peak RSS, gather, {args.hosts} hosts x {args.mb} MB, cap 16M", f"{capped / 1024:.1f} MB",
         f"{base / 1024:.1f} MB", capped / base)
    line(f"peak RSS, gather, {args.uncapped_hosts} hosts x {args.mb} MB, no cap", f"{uncapped / 1024:.1f} MB",
         f"{base / 1024:.1f} MB", uncapped / base)
    print("  (baseline: the same controller running `true` on 1 host)")
    print(f"wall: {wall:.1f} s capped, {uwall:.1f} s uncapped")


if __name__ == "__main__":
    main()
