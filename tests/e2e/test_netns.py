"""A silent network cut, made real with a network namespace and a veth pair.

The agent runs as a real `shoal-agent` inside a namespace; the controller (this
process) reaches it over a veth pair whose addresses exist only for this test.
Taking the link down drops packets without any RST or FIN, so each side can
notice only through its own liveness checks: the controller's pings and the
agent's TCP keepalive / user timeout. Needs root and `ip netns`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from shoal.agent.proctree import MARKER_ENV
from shoal.agent.server import Agent
from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.result import UNREACHABLE, Result
from shoal.controller.targets import Target
from tests.agents import running_agents, target_for
from tests.debris import marked, tokens_of
from tests.waiting import wait_for_async
from tests.programs import SHOAL_AGENT

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip`"),
]

AGENT_PORT = 8470
# The agent's TCP keepalive base in the namespace: probes after 1 s idle, 1 s
# apart, 3 of them; the same 4 s bound its unacknowledged sends (TCP_USER_TIMEOUT).
AGENT_KEEPALIVE = 1


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _subnet() -> tuple[str, str]:
    """A /30 inside 10.213.0.0/16 picked from our pid, so parallel runs do not collide."""
    base = (os.getpid() % 16384) * 4
    outer = f"10.213.{base >> 8}.{(base & 255) + 1}"
    inner = f"10.213.{base >> 8}.{(base & 255) + 2}"
    return outer, inner


class Namespace:
    """A namespace joined to ours by a veth pair; deleted (with the pair) on close."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.name = f"shoaltest{tag}"
        self.outer_if, self.inner_if = f"sho{tag}", f"shi{tag}"
        self.outer_ip, self.inner_ip = _subnet()

    def create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if, "netns", self.name)
        _ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer_if)
        _ip("link", "set", self.outer_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
        _ip("-n", self.name, "link", "set", self.inner_if, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    def cut(self) -> None:
        """Down the link: packets vanish, nobody is told."""
        _ip("link", "set", self.outer_if, "down")

    def delete(self) -> None:
        for args in (("link", "del", self.outer_if), ("netns", "del", self.name)):
            subprocess.run(["ip", *args], capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"`ip netns` unavailable: {probe.stderr.decode().strip()}")
    ns = Namespace()
    try:
        ns.create()
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def netns_agent(namespace: Namespace, tmp_path: Path) -> Iterator[tuple[Target, Path, Namespace]]:
    """A real shoal-agent listening inside the namespace; its stderr log in a file."""
    config = tmp_path / "agent.toml"
    config.write_text(f"[limits]\nkeepalive = {AGENT_KEEPALIVE}\n")
    log = tmp_path / "agent.log"
    with open(log, "wb") as err:
        agent = subprocess.Popen(
            ["ip", "netns", "exec", namespace.name, *SHOAL_AGENT, "--config", str(config),
             "--listen", f"{namespace.inner_ip}:{AGENT_PORT}", "--insecure", "--log-level", "debug",
             "--state-dir", str(tmp_path / "state")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
    try:
        yield Target(name="cut-host", host=namespace.inner_ip, port=AGENT_PORT), log, namespace
    finally:
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(5)


class Collect:
    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {}
        self.results: dict[str, Result] = {}

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        self.out.setdefault(host, bytearray()).extend(data)

    def on_result(self, result: Result) -> None:
        self.results[result.host] = result


def _tokens_running(needle: str) -> list[str]:
    """Markers of processes whose command line mentions `needle`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if needle in " ".join(proc.info["cmdline"] or ()):
                token = proc.environ().get(MARKER_ENV)
                if token:
                    found.append(token)
        except psutil.Error:
            continue
    return found


async def test_silent_cut_is_noticed_by_both_sides_and_other_hosts_finish(
        netns_agent: tuple[Target, Path, Namespace], tmp_path: Path) -> None:
    cut_target, log, namespace = netns_agent
    await wait_for_async(lambda: b"listening on" in log.read_bytes(), timeout=15)
    flag = tmp_path / "go"
    # Output keeps flowing, so the agent always has unacknowledged data after the
    # cut: keepalive probes never start then, only the user timeout can fire.
    script = f"echo up; while [ ! -e {flag} ]; do sleep 0.1; echo tick; done; echo done"
    handler = Collect()
    async with running_agents(2) as agents:
        targets = [cut_target, target_for(agents[0], "a"), target_for(agents[1], "b")]
        fleet = Fleet(targets, ConnectOptions(timeout=10, keepalive=0.5))
        run = asyncio.create_task(fleet.run(Command(shell=script), handler))
        await wait_for_async(lambda: all(b"up" in handler.out.get(t.name, b"") for t in targets), timeout=15)
        remote = _tokens_running(str(flag))
        cut_tokens = [t for t in remote if t not in _local_tokens(agents)]
        assert cut_tokens, "the namespaced agent's command was not found"
        namespace.cut()
        lost = await wait_for_async(lambda: handler.results.get("cut-host"), timeout=15)
        assert isinstance(lost, Result)
        assert set(handler.results) == {"cut-host"}  # noticed by keepalive, not because the others ended
        await wait_for_async(lambda: not any(marked(t) for t in cut_tokens), timeout=20)
        flag.touch()
        result = await asyncio.wait_for(run, 20)
    assert lost.status == UNREACHABLE and lost.error_code == "connection_lost"
    assert lost.error is not None and lost.error.startswith("connection lost")
    assert handler.results["a"].status == 0 and handler.results["b"].status == 0
    for host in ("a", "b"):
        assert handler.out[host].startswith(b"up\n") and handler.out[host].endswith(b"tick\ndone\n")
    assert result.status == UNREACHABLE


def _local_tokens(agents: list[Agent]) -> set[str]:
    return {t for a in agents for t in tokens_of(a)}

