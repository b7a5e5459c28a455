"""A dial-in agent that goes away stays in the hub's Prometheus scrape, as down.

What a monitoring admin checks: the scrape parses as Prometheus reads it, a dial-in
host that left is `shoal_up 0` (its host label, no other series) so `shoal_up == 0`
alerts fire, it is up again when it comes back, and the memory of departed names is
bounded (how many, how long, a restart) while `shoal hosts --hub` lists only who is
connected.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from shoal.protocol.errors import ConfigError
from shoal.agent.server import Agent
from shoal.controller.hub.client import HubConnection
from shoal.controller.hub.config import load_hub_config
from shoal.controller.hub.server import Hub
from tests.e2e.test_metricsview import Sample, parse_exposition
from tests.hubs import close_all, dial_in, new_key, running_hub
from tests.waiting import wait_for_async


async def _scrape(hub: Hub) -> list[Sample]:
    """One GET /metrics, checked line by line as exposition format; its samples."""
    url = f"http://{hub.metrics_address}/metrics"
    text = await asyncio.get_running_loop().run_in_executor(
        None, lambda: urllib.request.urlopen(url, timeout=30).read().decode())
    return parse_exposition(text)[1]


def _up(samples: list[Sample]) -> dict[str, float]:
    return {dict(labels)["host"]: value for name, labels, value in samples if name == "shoal_up"}


def _series_of(samples: list[Sample], host: str) -> set[str]:
    return {name for name, labels, _ in samples if dict(labels).get("host") == host}


async def _leave(hub: Hub, agent: Agent, name: str) -> None:
    """Stop `agent` and return once the hub has seen it go."""
    await agent.close()
    await wait_for_async(lambda: hub.registry.get(name) is None, what=f"the hub to see {name} leave")


async def _listed(socket: Path) -> list[object]:
    hub = await HubConnection.connect(str(socket))
    try:
        return [h["name"] for h in await hub.hosts()]
    finally:
        await hub.close()


async def test_a_dialin_agent_that_leaves_is_scraped_down_until_it_comes_back(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    socket = tmp_path / "hub.sock"
    async with running_hub(socket, key, metrics=("127.0.0.1", 0)) as hub:
        web1, web2 = await dial_in(hub, ["web1", "web2"], key)
        back: list[Agent] = []
        try:
            samples = await _scrape(hub)
            assert _up(samples) == {"web1": 1, "web2": 1}
            up_series = _series_of(samples, "web1")
            assert len(up_series) > 1  # an up host has its metrics too

            await _leave(hub, web1, "web1")
            samples = await _scrape(hub)
            assert _up(samples) == {"web1": 0, "web2": 1}
            assert _series_of(samples, "web1") == {"shoal_up"}  # down: no other series
            assert await _listed(socket) == ["web2"]  # hosts --hub: connected agents only

            back = await dial_in(hub, ["web1"], key)
            samples = await _scrape(hub)
            assert _up(samples) == {"web1": 1, "web2": 1}
            assert _series_of(samples, "web1") == up_series
            assert await _listed(socket) == ["web1", "web2"]
        finally:
            await close_all([web2, *back])


async def test_departed_names_are_bounded_the_oldest_forgotten_first(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    names = ["a1", "a2", "a3", "a4"]
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0), max_departed=2) as hub:
        agents = await dial_in(hub, names, key)
        for agent, name in zip(agents, names):  # one at a time: the order they left is known
            await _leave(hub, agent, name)
        assert _up(await _scrape(hub)) == {"a3": 0, "a4": 0}
        assert len(hub.registry.departed) == 2


async def test_forget_after_drops_a_departed_name_from_the_scrape(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0), forget_after=0.2) as hub:
        gone, stays = await dial_in(hub, ["gone", "stays"], key)
        try:
            await _leave(hub, gone, "gone")

            async def forgotten() -> bool:
                return "gone" not in _up(await _scrape(hub))

            await wait_for_async(forgotten, what="the departed name to be forgotten")
            assert _up(await _scrape(hub)) == {"stays": 1}
        finally:
            await stays.close()


async def test_forget_after_0_scrapes_a_departed_name_no_more(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0), forget_after=0) as hub:
        (gone,) = await dial_in(hub, ["gone"], key)
        await _leave(hub, gone, "gone")
        assert _up(await _scrape(hub)) == {}


async def test_a_hub_restart_forgets_departed_names(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as hub:
        (gone,) = await dial_in(hub, ["gone"], key)
        await _leave(hub, gone, "gone")
        assert _up(await _scrape(hub)) == {"gone": 0}
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as again:
        assert _up(await _scrape(again)) == {}


async def test_a_client_asking_for_a_departed_name_hears_when_it_left(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        (gone,) = await dial_in(hub, ["Gone"], key)
        await _leave(hub, gone, "gone")
        why = hub.why_not_connected("GONE")
        assert why.startswith("no agent of this name is connected to the hub (it left at ")
        assert hub.why_not_connected("never") == "no agent of this name is connected to the hub"


@pytest.mark.parametrize("value,expected", [("0", 0), ("3600", 3600), ("0.5", 0.5)])
def test_forget_after_in_hub_toml(tmp_path: Path, value: str, expected: float) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(f"forget_after = {value}\n")
    assert load_hub_config(str(path)) == {"forget_after": expected}


def test_a_negative_forget_after_in_hub_toml_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("log_level = 'info'\nforget_after = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_hub_config(str(path))
    assert str(caught.value) == f"{path}:2: forget_after must be a number 0 or more, not -1"
