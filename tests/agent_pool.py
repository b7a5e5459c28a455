"""Many agents in one child process, one per loopback address, all on the same port.

    python -m tests.agent_pool [--port P] PATTERN      e.g. 127.0.0.[1-30]

Tests and benchmarks that need agents to differ the way real hosts do (their own
environment), or the controller measured apart from its agents (peak RSS), start this
as a subprocess. Every address in PATTERN (expanded like a target pattern) gets its
own Agent listening on PORT; with port 0 a port free on all of them is found. When
all listen, one line `{"port": P, "count": N}` is printed; the agents run until
stdin reaches EOF (the parent closes it or dies), then close. `start_pool` and
`stop_pool` are the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
from pathlib import Path

from shoal.agent.server import Agent
from shoal.controller.nodeset import expand
from shoal.protocol.errors import ConfigError
from tests.agents import make_agents

ATTEMPTS = 20
ROOT = Path(__file__).resolve().parents[1]


def start_pool(pattern: str, port: int = 0, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start a pool in a child process; return it and its port once every agent
    listens, or port 0 (the pool already stopped) when it could not start."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.agent_pool", "--port", str(port), pattern],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until every agent listens, or b"" if it exited
    if not line:
        stop_pool(proc)
        return proc, 0
    return proc, int(json.loads(line)["port"])


def stop_pool(proc: subprocess.Popen[bytes]) -> None:
    """Close the pool's stdin, which stops its agents, and wait for it."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(30)
    proc.stdout.close()


async def start_all(addresses: list[str], port: int) -> list[Agent]:
    """Start one agent per address on `port` (0: the first one's free port)."""
    agents: list[Agent] = []
    try:
        for address in addresses:
            (agent,) = make_agents(listen=(f"{address}:{port}",), log_level="error")
            await agent.start()
            agents.append(agent)
            port = port or int(agent.addresses[0].rpartition(":")[2])
    except BaseException:
        await close_all(agents)
        raise
    return agents


async def close_all(agents: list[Agent]) -> None:
    for agent in agents:
        await agent.close(0)


async def serve(addresses: list[str], port: int) -> int:
    for attempt in range(ATTEMPTS if port == 0 else 1):
        try:
            agents = await start_all(addresses, port)
            break
        except (OSError, ConfigError):  # that port was taken on one of the addresses
            if attempt == ATTEMPTS - 1 or port:
                raise
    chosen = int(agents[0].addresses[0].rpartition(":")[2])
    print(json.dumps({"port": chosen, "count": len(agents)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await close_all(agents)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("pattern")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(serve(expand(args.pattern), args.port))


if __name__ == "__main__":
    sys.exit(main())
