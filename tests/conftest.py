"""Shared test plumbing: run `async def` tests, clean the environment, start agents."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from typing import Callable, Iterator

import pytest

from tests.agents import AgentThread


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine tests on a fresh event loop (we use no asyncio plugin)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=120))
    return True


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the user's shoal settings and colour preferences out of every test."""
    for name in list(os.environ):
        if name.startswith("SHOAL_") or name in ("NO_COLOR", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))


# -- agents ----------------------------------------------------------------------
#
# One way to get in-process agents in a test: `agents`, shared by a module's tests,
# or `start_agents(...)` for a test that needs its own (a fresh one, or several
# configured differently). Both take AgentThread's arguments (count, keys,
# policies, configuration overrides); each agent gets a state directory of its own.


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    """AgentThread's arguments for a module's `agents`: a module overrides this fixture
    (module scope) to get other agents, e.g. `{"count": 3}`."""
    return {}


@pytest.fixture(scope="module")
def agents(agent_settings: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    """Agents on loopback shared by a module's tests, served from a background thread."""
    with _agent_thread(agent_settings, tmp_path_factory) as thread:
        yield thread


@pytest.fixture
def start_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AgentThread]]:
    """Start agents for this test only (AgentThread's arguments); all stop when it ends."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(_agent_thread(settings, tmp_path_factory))


def _agent_thread(settings: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> AgentThread:
    settings = {"state_dir": str(tmp_path_factory.mktemp("state")), **settings}
    return AgentThread(**settings)  # type: ignore[arg-type]
