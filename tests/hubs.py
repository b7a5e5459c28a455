"""Test harness for the hub: a hub and dial-in agents on loopback, in-process.

`running_hub` starts a `Hub` on the current loop; `dial_in` starts agents that
dial it (and, with `listen`, also listen, so one test can reach the same agent
directly and through the hub); `HubThread` runs both on a background loop for
in-process CLI calls, which run their own `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, AsyncIterator

from shoal.agent.server import Agent
from shoal.controller.hub.server import Hub, HubSettings
from shoal.protocol.handshake import SharedKey
from tests.agents import config, make_agents
from tests.waiting import wait_for_async

# Reconnect fast in tests: the schedule's shape is tested on its own (test_hub_backoff).
FAST_RECONNECT = {"limits.reconnect_min": 0.05, "limits.reconnect_max": 0.5}


def dialin_address(hub: subprocess.Popen[bytes]) -> str:
    """Where a `shoal hub` process (stderr piped) takes agents: its first listen address,
    read from the line it logs once it listens."""
    assert hub.stderr is not None
    line = b""
    while b"dial in at" not in line:
        line = hub.stderr.readline()
        assert line, "the hub exited before it listened"
    return line.decode().rsplit("dial in at ", 1)[1].split(",")[0].strip()


def new_key(directory: Path) -> tuple[SharedKey, Path]:
    """A fresh key and its key file (mode 0600), for the CLI's --key-file."""
    key = SharedKey(os.urandom(32))
    path = directory / "fleet.key"
    path.write_text(f"shoal-key-v1 {key.secret.hex()}\n")
    path.chmod(0o600)
    return key, path


@contextlib.asynccontextmanager
async def running_hub(socket: Path, key: SharedKey | None, **settings: Any) -> AsyncIterator[Hub]:
    settings.setdefault("listen", (("127.0.0.1", 0),))
    hub = Hub(HubSettings(socket=str(socket), key=key, **settings))
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close(0)


_STATE_DIRS: list[str] = []


def _state_dir() -> str:
    """This process's own agent state directory, removed when it exits."""
    if not _STATE_DIRS:
        _STATE_DIRS.append(tempfile.mkdtemp(prefix="shoal-hub-agents-"))
        atexit.register(shutil.rmtree, _STATE_DIRS[0], True)
    return _STATE_DIRS[0]


def dialer_config(hub_address: str, name: str, **overrides: object) -> Any:
    overrides.setdefault("listen", ())
    # Not the default /var/lib/shoal: a test run leaves nothing in the machine's own state.
    overrides.setdefault("state_dir", _state_dir())
    return config(connect=(hub_address,), name=name, log_level="error", **{**FAST_RECONNECT, **overrides})


def dialers(hub: Hub, names: list[str], key: SharedKey | None, **overrides: object) -> list[Agent]:
    """One agent per name to dial `hub`, not started yet (made by tests.agents.make_agents)."""
    address = hub.dialins.addresses[0]
    return make_agents(len(names), [key] if key else None,
                       configure=lambda i: dialer_config(address, names[i], **overrides))


async def dial_in(hub: Hub, names: list[str], key: SharedKey | None, **overrides: object) -> list[Agent]:
    """Start one agent per name dialling `hub`; return once the hub holds them all."""
    agents = dialers(hub, names, key, **overrides)
    for agent in agents:
        await agent.start()
    await wait_for_async(lambda: all(hub.registry.get(n) is not None for n in names), timeout=15)
    return agents


async def close_all(agents: list[Agent]) -> None:
    for agent in agents:
        await agent.close()


class HubThread:
    """A hub and its dial-in agents served from a background thread's loop."""

    def __init__(self, directory: Path, names: list[str], key: SharedKey | None = None,
                 agent_overrides: dict[str, object] | None = None, **settings: Any) -> None:
        self.socket = directory / "hub.sock"
        self.key = key
        self.names = names
        self.loop = asyncio.new_event_loop()
        self.hub: Hub | None = None
        self.agents: list[Agent] = []
        self._settings = settings
        self._overrides = agent_overrides or {}
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> HubThread:
        self._thread.start()
        self.call_async(self._start())
        return self

    async def _start(self) -> None:
        self._settings.setdefault("listen", (("127.0.0.1", 0),))
        self.hub = Hub(HubSettings(socket=str(self.socket), key=self.key, **self._settings))
        await self.hub.start()
        self.agents = await dial_in(self.hub, self.names, self.key, **self._overrides)

    async def _stop(self) -> None:
        await close_all(self.agents)
        if self.hub is not None:
            await self.hub.close(0)

    def __exit__(self, *exc: object) -> None:
        self.call_async(self._stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call_async(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.call_async(run(), 10)
