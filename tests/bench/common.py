"""Helpers the benchmark scripts share: a free port and an agent in its own process."""

from __future__ import annotations

import asyncio
import compileall
import os
import socket
import subprocess
import time
from tests.programs import SHOAL_AGENT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    """A loopback port nobody listens on (bound by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start `shoal-agent` on 127.0.0.1:PORT and wait until it accepts connections."""
    proc = subprocess.Popen([*SHOAL_AGENT, "--listen", f"127.0.0.1:{port}",
                             "--log-level", "error", *extra], cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("agent did not start")


def raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one: a benchmark holds a socket per host."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def line(name: str, ours: str, base: str, ratio: float, width: int = 44, note: str = "") -> None:
    """One figure beside its same-run baseline and their ratio."""
    print(f"{name:<{width}} {ours:>11}   baseline {base:>11}   ratio {ratio:6.2f}" + (f"  {note}" if note else ""))


async def bare_spawns(count: int, at_once: int = 512) -> float:
    """Wall time of `count` local spawns of `true`, `at_once` at a time: what the agents must do anyway."""
    start = time.perf_counter()
    sem = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()

    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - start


def compile_shoal() -> None:
    """Write shoal's bytecode, as installing it does: under PYTHONDONTWRITEBYTECODE a
    source checkout would otherwise time the compiler on every run."""
    import shoal.agent
    import shoal.controller
    import shoal.protocol

    for package in (shoal.protocol, shoal.agent, shoal.controller):
        compileall.compile_dir(os.path.dirname(package.__file__ or ""), quiet=1)
