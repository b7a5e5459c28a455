"""Test harness: real agents on loopback inside the test process.

`running_agents` starts agents on the current event loop (for async tests that
use the library directly, or hold an `Agent` to reload); `AgentThread` runs them on
a loop in a background thread so in-process CLI calls (which call asyncio.run
themselves) can reach them. Tests get AgentThreads from the fixtures in conftest.py
(`agents`, `start_agents`); agents in other processes come from tests/agent_pool.py.
All three take the same arguments and build their agents with `make_agents`, the
one place a test's `Agent` is made: a test that needs one never started (a reload
checked before start) calls it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import AsyncIterator

from shoal.agent.config import AgentConfig, KeyPolicy
from shoal.agent.server import Agent
from shoal.controller.targets import DEFAULT_PORT, Target
from shoal.protocol.handshake import SharedKey


def config(**overrides: object) -> AgentConfig:
    overrides.setdefault("listen", ("127.0.0.1:0",))
    return AgentConfig.default().replace_from_cli(**overrides)


def target_for(agent: Agent, name: str | None = None, index: int = 0) -> Target:
    address = agent.addresses[index]
    if address.startswith("unix:"):
        return Target(name=name or address, host=None, port=DEFAULT_PORT, path=address[5:])
    host, _, port = address.rpartition(":")
    return Target(name=name or address, host=host.strip("[]"), port=int(port))


# Agent i's configuration, whole (an agent.toml loaded from disk, or one state
# directory and audit log per agent), for a test that cannot say it as overrides.
Configure = Callable[[int], AgentConfig]


def make_agents(count: int = 1, keys: list[SharedKey] | None = None, policies: tuple[KeyPolicy, ...] = (),
                configure: Configure | None = None, **overrides: object) -> list[Agent]:
    """`count` agents, not started, accepting `keys` or the keys of `policies` (each
    naming its key file). Each is configured `config(**overrides)`, or with
    `configure(i)` and `overrides` on top."""
    if policies:
        overrides = {**overrides, "keys": policies}
    if configure is None:
        return [Agent(config(**overrides), keys=keys) for _ in range(count)]
    return [Agent(configure(i).replace_from_cli(**overrides), keys=keys) for i in range(count)]


@contextlib.asynccontextmanager
async def running_agents(count: int = 1, keys: list[SharedKey] | None = None, policies: tuple[KeyPolicy, ...] = (),
                         configure: Configure | None = None, **overrides: object) -> AsyncIterator[list[Agent]]:
    """`make_agents`' agents, started on this loop and closed on the way out."""
    agents = make_agents(count, keys, policies, configure, **overrides)
    try:
        for a in agents:
            await a.start()
        yield agents
    finally:
        for a in agents:
            await a.close()


class AgentThread:
    """Agents served from a background thread's event loop."""

    def __init__(self, count: int = 1, keys: list[SharedKey] | None = None, policies: tuple[KeyPolicy, ...] = (),
                 configure: Configure | None = None, **overrides: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.agents = make_agents(count, keys, policies, configure, **overrides)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AgentThread:
        self._thread.start()
        for a in self.agents:
            asyncio.run_coroutine_threadsafe(a.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        for a in self.agents:
            asyncio.run_coroutine_threadsafe(a.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a plain function on the agents' loop and return its result."""
        fut: asyncio.Future = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)  # type: ignore[type-arg]
        return fut.result(10)

    @property
    def addresses(self) -> list[str]:
        return [a.addresses[0] for a in self.agents]

    def targets_spec(self) -> str:
        return ",".join(self.addresses)


async def _call(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def shoal(capsysbinary, *argv: str) -> tuple[int, bytes, bytes]:  # type: ignore[no-untyped-def]
    """Run `shoal ARGV` in-process: (exit status, stdout bytes, stderr bytes)."""
    from shoal.controller.cli.main import main

    status = main(list(argv))
    out, err = capsysbinary.readouterr()
    return status, out, err


def closed_port() -> int:
    """A loopback port nobody listens on (bound by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
