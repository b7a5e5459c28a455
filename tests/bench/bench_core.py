"""Core benchmarks: each figure printed next to a baseline measured in the same run.

    python -m tests.bench.bench_core [--bytes 2G] [--agents 200] [--rounds 300] [--only startup]

1. latency of `true` over an open connection vs a bare local asyncio spawn;
2. a whole `shoal run 127.0.0.1 -- true` process vs `python -c pass`, and vs
   `ssh 127.0.0.1 true` on a loopback sshd it starts (tests/bench/sshd.py), the three
   taking turns so that load on the machine weighs on each alike;
3. stdout throughput of `head -c N /dev/zero` through an agent to the controller's
   stdout vs the floor of that path: the same bytes piped from head into a plain
   Python loopback socket and read on the other end;
4. fan-out: `true` on many agents sharing one process, wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.targets import Target
from tests.agents import make_agents
from tests.bench.common import ROOT, compile_shoal, free_port, start_agent
from tests.bench.sshd import loopback_sshd
from tests.programs import installed

# The installed entry point, as a user types it (not a version-manager shim).
SHOAL = installed("shoal")


def size_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def line(name: str, ours: str, base: str, ratio: float, note: str = "") -> None:
    print(f"{name:<38} {ours:>16}   baseline {base:>16}   ratio {ratio:6.2f}  {note}")


# -- 1. round trip -----------------------------------------------------------

async def latency(rounds: int, port: int) -> None:
    bare = []
    for _ in range(rounds):
        t = time.perf_counter()
        p = await asyncio.create_subprocess_exec("true")
        await p.wait()
        bare.append(time.perf_counter() - t)
    client = await AgentClient.connect(Target("bench", "127.0.0.1", port), timeout=5)
    ours = []
    for _ in range(rounds):
        t = time.perf_counter()
        await (await client.exec(Command(argv=["true"]))).wait()
        ours.append(time.perf_counter() - t)
    await client.close()
    for label, p in (("median", 50), ("p99", 99)):
        a, b = pct(ours, p), pct(bare, p)
        line(f"round trip of `true` ({label})", f"{a * 1e3:.2f} ms", f"{b * 1e3:.2f} ms", a / b,
             "(goal: within 2x of a bare local spawn)")


# -- 2. whole process ---------------------------------------------------------

def _median_walls(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each argv (stdin from /dev/null) over `runs` rounds; in each
    round every command runs once, so a change in the machine's load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            t = time.perf_counter()
            subprocess.run(argv, check=True, cwd=ROOT, stdin=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(values) for name, values in times.items()}


def whole_process(port: int, runs: int = 20) -> None:
    """A whole `shoal run` process, always against `python -c pass` (the floor of any
    Python program's start-up), and against `ssh 127.0.0.1 true` on a loopback sshd the
    benchmark starts itself (tests/bench/sshd.py) when the machine has one."""
    compile_shoal()
    name = "whole `shoal run ... -- true`"
    commands = {"shoal": [SHOAL, "run", f"127.0.0.1:{port}", "-n", "--", "true"],
                "python": [sys.executable, "-c", "pass"]}
    with loopback_sshd() as (sshd, why):
        if sshd is not None:
            commands["ssh"] = sshd.ssh("true")
        walls = _median_walls(commands, runs)
    ours = walls["shoal"]
    line(name, f"{ours * 1e3:.1f} ms", f"{walls['python'] * 1e3:.1f} ms", ours / walls["python"],
         "(baseline: python -c pass)")
    if sshd is None:
        print(f"{name:<38} {'':>16}   baseline ssh 127.0.0.1 true: not measured ({why})")
        return
    line(name, f"{ours * 1e3:.1f} ms", f"{walls['ssh'] * 1e3:.1f} ms", ours / walls["ssh"],
         "(baseline: ssh 127.0.0.1 true; goal <= 0.33)")


# -- 3. throughput -------------------------------------------------------------

FLOOR_RECEIVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0; buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k: break
    n += k
print(n, flush=True)
"""

FLOOR_SENDER = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
while True:
    b = os.read(0, 1 << 20)
    if not b: break
    s.sendall(b)
s.close()
"""


def floor(nbytes: int) -> float:
    recv = subprocess.Popen([sys.executable, "-c", FLOOR_RECEIVER], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    port = recv.stdout.readline().strip()
    t = time.perf_counter()
    subprocess.run(f"head -c {nbytes} /dev/zero | {sys.executable} -c '{FLOOR_SENDER}' {port}", shell=True, check=True)
    got = int(recv.stdout.readline())
    elapsed = time.perf_counter() - t
    recv.wait()
    assert got == nbytes, got
    return nbytes / elapsed


def through_shoal(nbytes: int, port: int, extra: str = "") -> float:
    shoal = SHOAL
    t = time.perf_counter()
    out = subprocess.run(f"{shoal} run 127.0.0.1:{port} -n --raw {extra} -- head -c {nbytes} /dev/zero | wc -c",
                         shell=True, check=True, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t
    assert int(out.stdout) == nbytes, out.stdout
    return nbytes / elapsed


def throughput(nbytes: int, port: int) -> None:
    base = floor(nbytes)
    ours = through_shoal(nbytes, port)
    line(f"stdout throughput ({nbytes >> 20} MiB)", f"{ours / 1e6:.0f} MB/s", f"{base / 1e6:.0f} MB/s", ours / base,
         "(baseline: head | python loopback socket; goal >= 0.80)")


# -- 4. fan-out ----------------------------------------------------------------

class Quiet:
    def on_start(self, host: str) -> None: ...
    def on_output(self, host: str, stream: str, data: bytes) -> None: ...
    def on_result(self, result: object) -> None: ...


async def fanout(count: int) -> None:
    agents = make_agents(count)
    for a in agents:
        await a.start()
    targets = [Target(f"n{i}", "127.0.0.1", int(a.addresses[0].rsplit(":", 1)[1])) for i, a in enumerate(agents)]
    t = time.perf_counter()
    bare = await asyncio.gather(*(asyncio.create_subprocess_exec("true") for _ in range(count)))
    await asyncio.gather(*(p.wait() for p in bare))
    base = time.perf_counter() - t
    t = time.perf_counter()
    result = await Fleet(targets, ConnectOptions(timeout=30), fanout=count).run(Command(argv=["true"]), Quiet())
    ours = time.perf_counter() - t
    assert result.status == 0 and len(result.results) == count
    line(f"fan-out: `true` on {count} agents", f"{ours:.2f} s", f"{base:.2f} s", ours / base,
         f"(baseline: {count} bare local spawns; goal < 1.5 s)")
    for a in agents:
        await a.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=size_arg, default=size_arg("2G"))
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--only", choices=("latency", "startup", "throughput", "fanout"),
                    help="run one of the four figures")
    args = ap.parse_args()
    port = free_port()
    agent = start_agent(port)
    try:
        if args.only in (None, "latency"):
            asyncio.run(latency(args.rounds, port))
        if args.only in (None, "startup"):
            whole_process(port)
        if args.only in (None, "throughput"):
            throughput(args.bytes, port)
        if args.only in (None, "fanout"):
            asyncio.run(fanout(args.agents))
    finally:
        agent.terminate()
        agent.wait()


if __name__ == "__main__":
    main()
