"""Hub benchmark: the issue 20 goals, each figure beside a baseline from the same run.

    python -m tests.bench.bench_hub [--hosts 5000] [--pools 8]

A real `shoal hub` runs in its own process (its RSS is read with psutil). The agents
run many per process (`--pools` child processes of this script), one per loopback
address 127.0.X.Y, each both listening on one port and dialling the hub under its
address as its name, so the same agents are reached directly and through the hub.
Packing agents costs what one agent per host never pays: a pool's one event loop
starts the commands of all its agents one after another, each spawn holding the
loop until the child has exec'd (about 1 ms here) and copying the pool's whole fd
table, two sockets per agent. Measured on 2 cores, `true` on 5,000 took 1.75x bare
spawns with two pools of 2,500, about 1.5x with four and 1.2-1.4x with eight,
whose dial-in and ping figures were no worse than with four; eight it is.

1. the hub's RSS holding every agent's authenticated connection, against the
   same hub holding none (goal: under 500 MB for 5,000);
2. wall time for every agent to dial in and authenticate from cold (the agents
   already running, as when a hub starts: nothing connected yet), against a
   direct `shoal ping` of all of them (a connect and handshake each; goal: under 3 s);
3. one ping round to every agent over the hub's warm connections (links already
   open), against the same round over direct connections already open
   (goal: under 0.2 s, 40 us per host); beside it the CPU per host the hub, this
   client and the simulated agents spend in it, against the direct round's, and the
   round's CPU floor: all of that CPU spread over the cpus they share. Where the
   floor is near the wall time the round is bound by CPU, not by waiting, and no
   hub alone can take it below the agents' own share;
4. `shoal run --hub NAME -- true` on one host, the whole process, against a direct
   `shoal run ADDRESS -- true` (goal: at most a quarter), both the installed
   console script; beside them the floor, `python -c pass` and `python -I -S -c pass`.
   That floor is the interpreter's: with an editable install (a `.pth` finder that
   imports pathlib and re) or a site `.pth` that imports a package, it alone can be
   a quarter of the direct run;
5. `shoal run --hub -f N` of `true` on every host, against the same number of bare
   local spawns of `true` (goal: within 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil

from tests.bench.common import ROOT, bare_spawns, compile_shoal, line, raise_fd_limit
from tests.programs import SHOAL, installed

# The installed `shoal` command, as a user types it (its console script: entry.py's path).
ENTRY = [installed("shoal")]


def pattern_for(hosts: int, first: int = 0) -> list[str]:
    """Loopback addresses 127.0.X.Y (Y 1..250) for hosts first .. first+hosts-1."""
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(first, first + hosts)]


# -- the agent pools (child processes) ------------------------------------------------


async def pool_main(hub: str, key_file: str, port: int, first: int, count: int) -> None:
    """Start `count` agents, say "built", have them all dial the hub on "go", say
    "connected" once every one is authenticated to it, run until stdin closes."""
    from shoal.hostio.keyfile import load_key_file
    from tests.agents import config, make_agents

    addresses = pattern_for(count, first)
    state = tempfile.mkdtemp(prefix="bench-hub-state-")  # not /var/lib/shoal: agents starting clear it
    settings = {"connect": (hub,), "log_level": "error", "state_dir": state, "limits.reconnect_min": 0.5,
                "limits.max_connections": 4}
    agents = make_agents(len(addresses), [load_key_file(key_file)],
                         configure=lambda i: config(listen=(f"{addresses[i]}:{port}",), name=addresses[i], **settings))
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(a.start(dial=False) for a in agents))  # up and listening, as on their hosts
    print("built", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for agent in agents:
        agent.start_dialing()
    dialers = [d for a in agents for d in a.dialers]
    while not all(d.connected.is_set() for d in dialers):
        await asyncio.sleep(0.01)
    print("connected", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(a.close() for a in agents))
    shutil.rmtree(state, ignore_errors=True)


# -- the benchmark --------------------------------------------------------------------


def start_hub(directory: Path, key_file: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    sock = directory / "hub.sock"
    hub = subprocess.Popen([*SHOAL, "hub", "--socket", str(sock), "--listen", "127.0.0.1:0", "--key-file",
                            str(key_file), "--log-level", "info"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    assert hub.stderr is not None
    text = b""
    while b"dial in at" not in text:
        text = hub.stderr.readline()
        if not text:
            raise SystemExit("the hub did not start")
    address = text.decode().rsplit("dial in at ", 1)[1].split(",")[0].strip()
    # from here on its log is not read: send it nowhere so it cannot fill the pipe
    subprocess.Popen(["cat"], stdin=hub.stderr, stdout=subprocess.DEVNULL)
    return hub, address, sock


def timed(argv: list[str]) -> tuple[float, bytes, bytes]:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])}... exited {out.returncode}: {out.stderr.decode()[-400:]}")
    return elapsed, out.stdout, out.stderr


async def hub_count(sock: Path) -> int:
    from shoal.controller.hub.client import HubConnection

    conn = await HubConnection.connect(str(sock))
    try:
        return len(await conn.hosts())
    finally:
        await conn.close()


class RoundFigures(NamedTuple):
    """Medians of the ping rounds: wall seconds, and CPU seconds of the hub, this client and the agent pools."""

    via_hub: float
    straight: float
    hub_cpu: float
    client_cpu_via_hub: float
    client_cpu_straight: float
    agents_cpu_via_hub: float
    agents_cpu_straight: float


async def hub_answers(sock: Path, stop: threading.Event) -> list[float]:
    """The hub's own PING round trips, one every 20 ms, until `stop`: how responsive it stays."""
    from shoal.controller.hub.client import HubConnection

    conn = await HubConnection.connect(str(sock), timeout=60)
    times: list[float] = []
    try:
        while not stop.is_set():
            times.append(await conn.ping())
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    return times


class Answers:
    """`hub_answers` on a thread of its own, while the caller does something else."""

    def __init__(self, sock: Path) -> None:
        self.stop = threading.Event()
        self.times: list[float] = []
        self.thread = threading.Thread(target=lambda: self.times.extend(asyncio.run(hub_answers(sock, self.stop))))
        self.thread.start()

    def end(self) -> tuple[float, float]:
        """Median and worst round trip, in ms."""
        self.stop.set()
        self.thread.join(120)
        return statistics.median(self.times) * 1e3, max(self.times) * 1e3


async def ping_rounds(sock: Path, names: list[str], port: int, rounds: int, hub_pid: int,
                      pool_pids: list[int]) -> RoundFigures:
    """Median ping round over hub links and over direct connections, all opened beforehand."""
    from shoal.controller.client import AgentClient, ping_all
    from shoal.controller.fanout import fan_out
    from shoal.controller.hub.client import HubConnection
    from shoal.controller.targets import Target
    from shoal.hostio.keyfile import load_key_file
    from shoal.protocol.errors import ShoalError

    key = load_key_file(os.environ["BENCH_KEY"])
    conn = await HubConnection.connect(str(sock))
    links = await fan_out([Target(name=n, host=n, port=1) for n in names], conn.link, limit=512)
    direct = await fan_out([Target(name=n, host=n, port=port) for n in names],
                           lambda t: AgentClient.connect(t, key=key, timeout=60), limit=256)
    hub = psutil.Process(hub_pid)
    pools = [psutil.Process(pid) for pid in pool_pids]

    def agents_cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in pools)

    async def round_over(clients: list[AgentClient]) -> tuple[float, float, float, float]:
        hub_cpu, own_cpu, agents = sum(hub.cpu_times()[:2]), time.process_time(), agents_cpu()
        start = time.perf_counter()
        results = await ping_all(clients)
        wall = time.perf_counter() - start
        assert not any(isinstance(r, ShoalError) for r in results)
        return wall, sum(hub.cpu_times()[:2]) - hub_cpu, time.process_time() - own_cpu, agents_cpu() - agents

    try:
        via_hub = [await round_over(links) for _ in range(rounds)]  # type: ignore[arg-type]
        straight = [await round_over(direct) for _ in range(rounds)]
    finally:
        await asyncio.gather(*(c.close() for c in direct))
        await conn.close()
    return RoundFigures(statistics.median(r[0] for r in via_hub), statistics.median(r[0] for r in straight),
                        statistics.median(r[1] for r in via_hub), statistics.median(r[2] for r in via_hub),
                        statistics.median(r[2] for r in straight), statistics.median(r[3] for r in via_hub),
                        statistics.median(r[3] for r in straight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--pools", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", nargs=5, metavar=("HUB", "KEY", "PORT", "FIRST", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.pool:
        hub, key, port, first, count = args.pool
        asyncio.run(pool_main(hub, key, int(port), int(first), int(count)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    from shoal.protocol.handshake import SharedKey

    key = SharedKey(os.urandom(32))
    key_file = work / "fleet.key"
    key_file.write_text(f"shoal-key-v1 {key.secret.hex()}\n")
    key_file.chmod(0o600)
    os.environ["BENCH_KEY"] = str(key_file)
    hub, address, sock = start_hub(work, key_file)
    hub_rss_empty = psutil.Process(hub.pid).memory_info().rss
    port = 20000 + os.getpid() % 20000
    n = args.hosts
    share = -(-n // args.pools)
    pools = [subprocess.Popen([sys.executable, "-m", "tests.bench.bench_hub", "--pool", address, str(key_file),
                               str(port), str(i * share), str(min(share, n - i * share))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
             for i in range(args.pools) if i * share < n]
    try:
        for p in pools:
            assert p.stdout is not None and p.stdout.readline() == b"built\n"
        idle = Answers(sock)
        time.sleep(1)
        idle_answers = idle.end()
        storm = Answers(sock)
        start = time.perf_counter()
        for p in pools:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        # Each pool says when all its agents are in, so the hub is not asked for its
        # list of thousands of agents while they dial (which would load it); its
        # count then confirms what it holds.
        for p in pools:
            assert p.stdout is not None and p.stdout.readline() == b"connected\n"
        while asyncio.run(hub_count(sock)) < n:
            time.sleep(0.01)
        dial_in = time.perf_counter() - start
        storm_answers = storm.end()
        hub_rss = psutil.Process(hub.pid).memory_info().rss
        names = pattern_for(n)
        spec = ",".join(f"127.0.{x}.[1-250]" for x in range(1, n // 250 + 1))
        if n % 250:
            spec = ",".join(filter(None, [spec, f"127.0.{n // 250 + 1}.[1-{n % 250}]"]))
        direct_spec = ",".join(f"{part}:{port}" for part in spec.split(","))
        ping_direct = statistics.median(
            timed([*SHOAL, "ping", "--key-file", str(key_file), "-f", "1024", "--connect-timeout", "60",
                   direct_spec])[0] for _ in range(1))
        ping = asyncio.run(ping_rounds(sock, names, port, args.rounds, hub.pid, [p.pid for p in pools]))
        # The installed command's path (entry.py), the same for both; interleaved, with the
        # floor any Python process pays on this machine.
        one = {"hub": [*ENTRY, "run", "-n", "--hub", str(sock), names[0], "--", "true"],
               "direct": [*ENTRY, "run", "-n", "--key-file", str(key_file), f"{names[0]}:{port}", "--", "true"],
               "pass": [sys.executable, "-c", "pass"], "bare": [sys.executable, "-I", "-S", "-c", "pass"]}
        compile_shoal()  # as installed: bytecode written, not compiled again by every process
        one_times: dict[str, list[float]] = {k: [] for k in one}
        for _ in range(max(5, args.rounds)):
            for k, argv in one.items():
                one_times[k].append(timed(argv)[0])
        one_hub, one_direct, floor, bare = (statistics.median(one_times[k]) for k in one)
        fleet_hub = statistics.median(timed([*SHOAL, "run", "-n", "-o", "gather", "-q", "-f", str(n), "--hub",
                                             str(sock), spec, "--", "true"])[0] for _ in range(args.rounds))
        spawns = statistics.median(asyncio.run(bare_spawns(n)) for _ in range(args.rounds))
    finally:
        for p in pools:
            assert p.stdin is not None
            p.stdin.close()
        for p in pools:
            p.wait(120)
        hub.terminate()
        hub.wait(60)
    mb = 1024 * 1024
    print(f"{n} agents in {len(pools)} child processes; medians of {args.rounds} rounds; {os.cpu_count()} cpus")
    line(f"hub RSS holding {n} agent connections", f"{hub_rss / mb:.0f} MB", f"{hub_rss_empty / mb:.0f} MB",
         hub_rss / hub_rss_empty, width=52, note="goal < 500 MB; baseline: the same hub holding none")
    line(f"{n} agents dial in and authenticate, cold", f"{dial_in:.2f} s", f"{ping_direct:.2f} s",
         dial_in / ping_direct, width=52, note="goal < 3 s; baseline: direct shoal ping of all (connect+auth)")
    line(f"hub's answer to a local client, {n} dialling in", f"{storm_answers[0]:.1f} ms", f"{idle_answers[0]:.1f} ms",
         storm_answers[0] / idle_answers[0], width=52, note="median; baseline: the same hub idle")
    line("  worst of them", f"{storm_answers[1]:.1f} ms", f"{idle_answers[1]:.1f} ms",
         storm_answers[1] / idle_answers[1], width=52, note="stays responsive: a local client is served throughout")
    line(f"ping round to {n}, warm, through the hub", f"{ping.via_hub:.3f} s", f"{ping.straight:.3f} s",
         ping.via_hub / ping.straight, width=52,
         note=f"goal < 0.2 s ({ping.via_hub / n * 1e6:.0f} us/host); baseline: same round on open direct connections")
    us = 1e6 / n
    line("  hub CPU per host in that round", f"{ping.hub_cpu * us:.1f} us", f"{ping.client_cpu_straight * us:.1f} us",
         ping.hub_cpu / ping.client_cpu_straight, width=52,
         note="baseline: this client's CPU per host in the direct round (psutil: 10 ms ticks)")
    line("  client CPU per host in that round", f"{ping.client_cpu_via_hub * us:.1f} us",
         f"{ping.client_cpu_straight * us:.1f} us", ping.client_cpu_via_hub / ping.client_cpu_straight, width=52,
         note="baseline: the same client's CPU per host in the direct round")
    line("  simulated agents' CPU per host in that round", f"{ping.agents_cpu_via_hub * us:.1f} us",
         f"{ping.agents_cpu_straight * us:.1f} us", ping.agents_cpu_via_hub / ping.agents_cpu_straight, width=52,
         note="baseline: the agents' CPU per host in the direct round")
    cpus = os.cpu_count() or 1
    floor_round = (ping.hub_cpu + ping.client_cpu_via_hub + ping.agents_cpu_via_hub) / cpus
    line(f"  CPU floor of that round on {cpus} cpus", f"{floor_round:.3f} s", f"{ping.via_hub:.3f} s",
         floor_round / ping.via_hub, width=52,
         note="hub + client + agents CPU over the cpus they share; baseline: the round's wall time")
    line("shoal run --hub of true, 1 host (process)", f"{one_hub:.3f} s", f"{one_direct:.3f} s",
         one_hub / one_direct, width=52, note="goal <= 0.25; baseline: direct shoal run of true")
    line("  floor: python -c pass", f"{floor:.3f} s", f"{one_direct:.3f} s", floor / one_direct, width=52,
         note="what any Python process costs here, beside the direct run")
    line("  floor: python -I -S -c pass", f"{bare:.3f} s", f"{one_direct:.3f} s", bare / one_direct, width=52,
         note="the same without site-packages")
    line(f"shoal run --hub of true on {n} warm hosts", f"{fleet_hub:.2f} s", f"{spawns:.2f} s",
         fleet_hub / spawns, width=52, note="goal <= 1.5; baseline: as many bare local spawns of true")


if __name__ == "__main__":
    main()
