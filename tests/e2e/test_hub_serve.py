"""The hub as a service: its key's limits, warm inventory targets, Prometheus, SIGTERM, namespaces."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from shoal.agent.config import KeyPolicy
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.hub.client import HubAccess
from shoal.controller.remote import Command
from shoal.controller.targets import Target
from tests.agents import running_agents, target_for
from tests.waiting import wait_for, wait_for_async
from tests.e2e.test_hub import Collect, named
from tests.hubs import close_all, dial_in, dialin_address, new_key, running_hub
from tests.programs import SHOAL, SHOAL_AGENT

REPO = Path(__file__).resolve().parents[2]


async def test_the_hub_runs_nothing_its_key_may_not(tmp_path: Path) -> None:
    key, key_file = new_key(tmp_path)
    policy = KeyPolicy(name="hub", file=str(key_file), commands=("echo allowed",), metrics=False)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, ["web1"], None, keys=(policy,))
        try:
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                ok = await Fleet([named("web1")], options).run(Command(shell="echo allowed"), Collect())
                denied = await Fleet([named("web1")], options).run(Command(shell="id"), Collect())
            assert ok.results[0].status == 0
            assert denied.results[0].outcome == "denied" and denied.results[0].status == 126
        finally:
            await close_all(agents)


async def test_inventory_targets_are_kept_warm_under_their_names(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_agents(1, keys=[key]) as (agent,):
        direct = target_for(agent, name="db1")
        async with running_hub(tmp_path / "hub.sock", key, targets=(direct,), connect=ConnectOptions(key=key)) as hub:
            await wait_for_async(lambda: hub.registry.get("db1") is not None, timeout=15)
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                seen = Collect()
                result = await Fleet([named("db1")], options).run(Command(shell="echo warm"), seen)
            assert result.results[0].status == 0 and bytes(seen.out["db1"]) == b"warm\n"
            assert hub.registry.get("db1").kind == "direct"  # type: ignore[union-attr]


async def test_one_scrape_returns_every_agents_metrics_with_shoal_up(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    away = Target(name="away", host="127.0.0.1", port=_closed_port())
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0), targets=(away,),
                           connect=ConnectOptions(key=key, timeout=2)) as hub:
        agents = await dial_in(hub, ["web1", "web2"], key)
        # an inventory name stays the inventory's while its target is away: no dial-in takes it
        assert "inventory target" in (hub.registry.holder("AWAY") or "")
        try:
            url = f"http://{hub.metrics_address}/metrics"
            text = await asyncio.get_running_loop().run_in_executor(
                None, lambda: urllib.request.urlopen(url, timeout=30).read().decode())
        finally:
            await close_all(agents)
    up = dict(re.findall(r'^shoal_up\{host="([^"]+)"\} (\d)$', text, re.M))
    assert up == {"web1": "1", "web2": "1", "away": "0"}
    assert re.search(r'^shoal_load1\{host="web2"\} ', text, re.M) or 'host="web2"' in text.split("shoal_up", 2)[-1]


def _closed_port() -> int:
    from tests.agents import closed_port

    return closed_port()


def test_sigterm_drains_the_hub_then_it_exits_0(tmp_path: Path) -> None:
    key, key_file = new_key(tmp_path)
    sock = tmp_path / "hub.sock"
    hub = subprocess.Popen(
        [*SHOAL, "hub", "--socket", str(sock), "--listen", "127.0.0.1:0",
         "--key-file", str(key_file), "--drain-grace", "30"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO))
    agent = None
    client = None
    try:
        address = dialin_address(hub)
        agent = subprocess.Popen(
            [*SHOAL_AGENT, "--connect", address, "--name", "drained", "--key-file",
             str(key_file), "--state-dir", str(tmp_path / "state"), "--reconnect-min", "0.05"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO))
        wait_for(lambda: subprocess.run([*SHOAL, "hosts", "--hub", str(sock)],
                                    capture_output=True, cwd=str(REPO)).stdout.startswith(b"drained"), timeout=20)
        flag = tmp_path / "started"
        client = subprocess.Popen(
            [*SHOAL, "run", "drained", "--hub", str(sock), "-n", "--",
             f"touch {flag}; sleep 1; echo finished"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
        wait_for(flag.exists, timeout=20)
        hub.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=30)
        assert (client.returncode, out) == (0, b"finished\n"), err  # the request in flight finished
        assert hub.wait(30) == 0
        assert not sock.exists()
    finally:
        for proc in (client, agent, hub):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if hub.stderr is not None:
            hub.stderr.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip`")
def test_an_agent_in_a_namespace_it_can_only_dial_out_of_is_run_through_the_hub(tmp_path: Path) -> None:
    from tests.e2e.test_netns import Namespace

    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"`ip netns` unavailable: {probe.stderr.decode().strip()}")
    key, key_file = new_key(tmp_path)
    ns = Namespace()
    ns.name, ns.outer_if, ns.inner_if = f"shoalhub{os.getpid()}", f"shh{os.getpid()}", f"shj{os.getpid()}"
    ns.create()
    agent = None
    try:
        from tests.hubs import HubThread

        with HubThread(tmp_path, [], key, listen=((ns.outer_ip, 0),)) as t:
            assert t.hub is not None
            address = t.hub.dialins.addresses[0]
            agent = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-m", "shoal.agent.cli", "--connect", address,
                 "--name", "inside", "--key-file", str(key_file), "--state-dir", str(tmp_path / "state"),
                 "--reconnect-min", "0.05"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO))
            wait_for(lambda: t.call(lambda: t.hub.registry.get("inside") is not None), timeout=20)  # type: ignore[union-attr]
            # nothing in the namespace listens: the hub could not have reached it the other way
            listening = subprocess.run(["ip", "netns", "exec", ns.name, "ss", "-Hltn"], capture_output=True,
                                       timeout=10)
            if listening.returncode == 0:
                assert listening.stdout.strip() == b""
            out = subprocess.run(
                [*SHOAL, "run", "inside", "--hub", str(t.socket), "-n",
                 "--", "ip -o -4 addr show"], capture_output=True, timeout=60, cwd=str(REPO))
            assert out.returncode == 0, out.stderr
            assert ns.inner_ip.encode() in out.stdout  # it ran inside the namespace
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        ns.delete()


async def test_local_clients_are_served_while_hundreds_of_agents_dial_in(tmp_path: Path) -> None:
    from tests.hubs import dialers

    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        (first,) = await dial_in(hub, ["steady"], key)
        crowd = dialers(hub, [f"n{i}" for i in range(300)], key)
        try:
            await asyncio.gather(*(a.start() for a in crowd))  # all dialling and authenticating at once
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                seen = Collect()
                result = await Fleet([named("steady")] * 1, options).run(Command(shell="echo served"), seen)
            assert result.results[0].status == 0 and bytes(seen.out["steady"]) == b"served\n"
            await wait_for_async(lambda: len(hub.registry) == 301, timeout=60)
        finally:
            await close_all([first, *crowd])


def test_the_example_hub_toml_loads() -> None:
    from shoal.controller.hub.config import load_hub_config

    settings = load_hub_config(str(REPO / "deploy" / "hub.toml"))
    assert settings["listen"] == ["0.0.0.0:8472"] and settings["key_file"] == "/etc/shoal/admin.key"
