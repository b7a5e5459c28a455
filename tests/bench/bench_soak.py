"""Soak benchmark: a mixed load on one agent process, then its resources compared.

    python -m tests.bench.bench_soak [--seconds 30] [--small 8] [--streams 2] [--stream-bytes 64M]

Against a `shoal-agent` subprocess (so its RSS and fds are its own) it runs, for
`--seconds`: `--small` connections each running `true` back to back, `--streams`
connections each pulling `head -c N /dev/zero`, and one connection at a time that
starts a command and is dropped at a random moment (the agent must kill it).

Printed: commands/s and p50/p99 latency of `true` (baseline: the same command
spawned locally with asyncio, measured in this run), stream throughput, drops,
and the agent's RSS, fd count and child count at the start and at the end after
the load stopped (baseline: the start; a leak shows as a ratio above 1).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import time

import psutil

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from shoal.controller.targets import Target
from tests.bench import common
from tests.bench.bench_core import line, pct, size_arg
from tests.bench.common import free_port


def start_agent(port: int) -> subprocess.Popen[bytes]:
    return common.start_agent(port, "--kill-grace", "0.5")


def resources(pid: int) -> tuple[int, int, int]:
    """RSS bytes, open fds, live children of the agent."""
    p = psutil.Process(pid)
    children = [c for c in p.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    return p.memory_info().rss, p.num_fds(), len(children)


async def local_true_latency(rounds: int) -> list[float]:
    """Baseline: spawn `true` from this process with asyncio."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        times.append(time.perf_counter() - t)
    return times


class Load:
    def __init__(self, target: Target, until: float, stream_bytes: int) -> None:
        self.target = target
        self.until = until
        self.stream_bytes = stream_bytes
        self.latencies: list[float] = []
        self.streamed = 0
        self.drops = 0
        self.failures = 0

    async def small(self) -> None:
        client = await AgentClient.connect(self.target, timeout=10)
        try:
            while time.monotonic() < self.until:
                t = time.perf_counter()
                result = await (await client.exec(Command(argv=["true"]))).wait()
                self.latencies.append(time.perf_counter() - t)
                self.failures += result.status != 0
        finally:
            await client.close()

    async def stream(self) -> None:
        client = await AgentClient.connect(self.target, timeout=10)
        try:
            while time.monotonic() < self.until:
                proc = await client.exec(Command(argv=["head", "-c", str(self.stream_bytes), "/dev/zero"]))
                async for event in proc:
                    self.streamed += len(event.data)
                self.failures += (await proc.wait()).status != 0
        finally:
            await client.close()

    async def dropper(self) -> None:
        rng = random.Random(7)
        while time.monotonic() < self.until:
            client = await AgentClient.connect(self.target, timeout=10)
            shell = rng.choice(["sleep 30", "head -c 100000000 /dev/zero", "setsid sleep 30 & sleep 30"])
            await client.exec(Command(shell=shell))
            await asyncio.sleep(rng.uniform(0.01, 0.3))
            client.abort()
            self.drops += 1


async def settle(pid: int, timeout: float = 15) -> float:
    """Wait for the agent to have no children left; the time it took."""
    start = time.monotonic()
    while resources(pid)[2] and time.monotonic() - start < timeout:
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def soak(args: argparse.Namespace) -> None:
    port = free_port()
    agent = start_agent(port)
    target = Target(name="soak", host="127.0.0.1", port=port)
    try:
        warm = Load(target, time.monotonic() + 1, 1 << 20)
        await asyncio.gather(warm.small(), warm.stream())
        rss0, fds0, _ = resources(agent.pid)
        load = Load(target, time.monotonic() + args.seconds, args.stream_bytes)
        t = time.monotonic()
        await asyncio.gather(*(load.small() for _ in range(args.small)),
                             *(load.stream() for _ in range(args.streams)),
                             *([load.dropper()] if args.drops else []))
        elapsed = time.monotonic() - t
        settled = await settle(agent.pid)
        rss1, fds1, kids1 = resources(agent.pid)
        base = await local_true_latency(200)
    finally:
        agent.terminate()
        agent.wait(30)
    n = len(load.latencies)
    p50, p99, b50, b99 = pct(load.latencies, 50), pct(load.latencies, 99), pct(base, 50), pct(base, 99)
    print(f"soak: {args.seconds:g}s, {args.small} small + {args.streams} stream connections, "
          f"{load.drops} dropped connections, {load.failures} failed commands")
    line("small commands/s", f"{n / elapsed:.0f}/s", f"{1 / statistics.mean(base):.0f}/s",
         (n / elapsed) * statistics.mean(base), "baseline: local asyncio spawn, one at a time")
    line("latency p50", f"{p50 * 1e3:.2f} ms", f"{b50 * 1e3:.2f} ms", p50 / b50)
    line("latency p99", f"{p99 * 1e3:.2f} ms", f"{b99 * 1e3:.2f} ms", p99 / b99)
    line("stream throughput", f"{load.streamed / elapsed / 1e6:.0f} MB/s", "-", 0.0, "shared with the small load")
    line("agent RSS start -> end", f"{rss1 / 2**20:.1f} MiB", f"{rss0 / 2**20:.1f} MiB", rss1 / rss0)
    line("agent fds start -> end", f"{fds1}", f"{fds0}", fds1 / fds0)
    print(f"agent children left after the load: {kids1} (settled in {settled:.2f}s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--small", type=int, default=8, help="connections running `true` back to back")
    p.add_argument("--streams", type=int, default=2, help="connections pulling big outputs")
    p.add_argument("--stream-bytes", type=size_arg, default=size_arg("64M"))
    p.add_argument("--no-drops", dest="drops", action="store_false", help="leave out the dropped connections")
    asyncio.run(soak(p.parse_args()))


if __name__ == "__main__":
    main()
