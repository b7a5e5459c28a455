"""Discovery over IPv6: unicast on ::1, multicast on a link-local group between namespaces.

The multicast test joins two namespaces it creates with a veth pair carrying
only the link-local addresses it assigns (fe80::a agent side, fe80::c
controller side); the namespaces go away with it. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shoal.agent.cli import main as agent_main
from shoal.agent.config import DiscoveryConfig
from shoal.agent.respondersocket import Endpoint, plan_endpoints
from shoal.hostio.keyfile import write_key_file
from shoal.controller.cli.main import main
from shoal.protocol.discovery import DEFAULT_GROUP, DEFAULT_GROUP6, decode_reply
from tests.agents import AgentThread, running_agents
from tests.e2e.test_discovery import KEY, NETNS_REASON, _ip, discovery
from tests.agent.test_discovery_reload import _probe
from tests.waiting import wait_for
from tests.programs import SHOAL, SHOAL_AGENT

ROOT = Path(__file__).resolve().parents[2]


def _free_udp6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_sockets_follow_the_tcp_listeners_family_and_scope() -> None:
    on = DiscoveryConfig(enabled=True, port=9)
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert plan_endpoints(["[::1]:5"], on) == [Endpoint(v6, "::1", 9, None)]
    assert plan_endpoints(["[::]:5"], on) == [Endpoint(v6, "::", 9, DEFAULT_GROUP6)]
    assert plan_endpoints(["127.0.0.1:5", "[::]:6"], on) == [Endpoint(v4, "127.0.0.1", 9, None),
                                                             Endpoint(v6, "::", 9, DEFAULT_GROUP6)]
    assert plan_endpoints(["0.0.0.0:5"], on) == [Endpoint(v4, "0.0.0.0", 9, DEFAULT_GROUP)]
    assert plan_endpoints(["unix:/x"], on) == [Endpoint(v4, "0.0.0.0", 9, DEFAULT_GROUP)]
    moved = DiscoveryConfig(enabled=True, port=9, group="239.1.1.1", group6="ff02::1:2")
    assert [e.group for e in plan_endpoints(["0.0.0.0:5", "[::]:6"], moved)] == ["239.1.1.1", "ff02::1:2"]


def test_shoal_discover_finds_an_agent_over_ipv6_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          start_agents: Callable[..., AgentThread]) -> None:
    key_path = tmp_path / "fleet.key"
    key = write_key_file(key_path)
    port = _free_udp6_port()
    agents = start_agents(keys=[key], **discovery("[::1]", port, "six"))
    tcp = agents.addresses[0]
    status = main(["discover", "--subnet", "::1/128", "--port", str(port), "--key-file", str(key_path),
                   "--json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"name": "six", "address": "::1", "port": int(tcp.rpartition(":")[2]),
         "version": agents.agents[0].software, "key_id": key.key_id}]
    assert main(["discover", "--subnet", "::1", "--port", str(port), "--targets"]) == 0
    assert capsys.readouterr().out == tcp + "\n"


def _free_on_both(host: str) -> int:
    """A UDP port free on `host` and on ::1 (tried until one is)."""
    while True:
        port = _free_udp6_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return port


async def test_each_family_is_told_its_own_tcp_port() -> None:
    port = _free_on_both("127.0.0.61")
    settings = {"listen": ("127.0.0.61:0", "[::1]:0"), "discovery.enabled": True, "discovery.port": port}
    async with running_agents(keys=[KEY], **settings) as (agent,):
        tcp4, tcp6 = (int(a.rpartition(":")[2]) for a in agent.addresses)
        assert agent.discovery.addresses == [f"127.0.0.61:{port}", f"[::1]:{port}"]
        for host, tcp in (("127.0.0.61", tcp4), ("::1", tcp6)):
            data = await _probe((host, port))
            assert data is not None and decode_reply(data).port == tcp, host


@pytest.mark.parametrize("group, line", [
    ("ff02::1", "shoal: --multicast: ff02::1 is link-local: name the interface to probe on, e.g. ff02::1%eth0"),
    ("ff02::1%nosuchif0", "shoal: --multicast: no network interface 'nosuchif0' for ff02::1%nosuchif0"),
    ("fe80::1%lo", "shoal: --multicast: fe80::1%lo is not a multicast address"),
])
def test_bad_ipv6_multicast_group_is_refused(group: str, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["discover", "--multicast", group]) == 2
    assert capsys.readouterr().err == line + "\n"


def test_check_config_accepts_the_groups_and_names_a_bad_one(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[discovery]\nenabled = true\ngroup = "239.1.2.3"\ngroup6 = "ff05::8470"\n')
    assert agent_main(["--config", str(path), "--check-config"]) == 0
    path.write_text('[discovery]\nenabled = true\n\ngroup6 = "fe80::1"\n')
    assert agent_main(["--config", str(path), "--check-config"]) == 2
    assert capsys.readouterr().err == f"shoal-agent: {path}:4: 'fe80::1' is not an IPv6 multicast group\n"


# -- link-local multicast between two namespaces (root) ---------------------------------

@contextlib.contextmanager
def ipv6_link() -> Iterator[tuple[str, str]]:
    """Agent and controller namespaces on one veth pair (va, vc) with fixed link-local addresses.

    No duplicate address detection and no generated addresses, so fe80::a and
    fe80::c are usable the moment the link is up.
    """
    tag = f"s6{os.getpid() % 100000}"
    agent_ns, ctl_ns = f"{tag}a", f"{tag}c"
    try:
        for ns in (agent_ns, ctl_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ctl_ns, "link", "add", "vc", "type", "veth", "peer", "name", "va", "netns", agent_ns)
        for ns, dev, address in ((agent_ns, "va", "fe80::a"), (ctl_ns, "vc", "fe80::c")):
            _ip("-n", ns, "link", "set", dev, "addrgenmode", "none")
            _ip("-n", ns, "addr", "add", f"{address}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        # The kernel starts sending on a veth only once it saw the carrier (up
        # to a second later); until then packets are silently dropped.
        wait_for(lambda: all(_operational(ns, dev) for ns, dev in ((agent_ns, "va"), (ctl_ns, "vc"))),
                 timeout=30, what="the veth pair to come up")
        yield agent_ns, ctl_ns
    finally:
        for ns in (agent_ns, ctl_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _operational(ns: str, dev: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "dev", dev], capture_output=True, text=True,
                         timeout=20).stdout
    return " state UP " in out


def _udp6_bound(ns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/udp6"], capture_output=True, text=True,
                         timeout=20).stdout
    return f":{port:04X} " in out


def _discover(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *SHOAL, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def _wait(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert proc.poll() is None, "the agent exited"
        return condition()
    wait_for(ready, timeout=30, what=what)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason=NETNS_REASON)
def test_agent_answers_a_link_local_ipv6_multicast_probe_and_follows_a_group_change(tmp_path: Path) -> None:
    key_path = tmp_path / "link.key"
    key = write_key_file(key_path)
    (tmp_path / "state").mkdir()
    cfg, log_path = tmp_path / "agent.toml", tmp_path / "agent.log"
    body = (f'listen = ["[::]:8470"]\nlog_level = "debug"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[[keys]]\nname = "k"\nfile = "{key_path}"\nallow = "all"\n[discovery]\nenabled = true\n')
    cfg.write_text(body)
    with ipv6_link() as (agent_ns, ctl_ns), open(log_path, "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", agent_ns, *SHOAL_AGENT,
                                 "--config", str(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait(lambda: _udp6_bound(agent_ns, 8470), "the agent's discovery socket", proc)
            run = _discover(ctl_ns, "discover", "--multicast", f"{DEFAULT_GROUP6}%vc", "--key-file", str(key_path),
                            "--expect", "1", "--timeout", "30", "--json")
            assert run.returncode == 0, run.stderr + log_path.read_text()
            found = json.loads(run.stdout)
            assert (found["address"], found["port"], found["key_id"]) == ("fe80::a%vc", 8470, key.key_id)
            # The listed target is one shoal can connect to.
            ping = _discover(ctl_ns, "ping", "[fe80::a%vc]:8470", "--key-file", str(key_path), "-c", "1")
            assert ping.returncode == 0, ping.stderr
            # SIGHUP with another group: the agent now answers there.
            cfg.write_text(body + 'group6 = "ff02::1:8470"\n')
            os.kill(proc.pid, signal.SIGHUP)
            _wait(lambda: b"configuration reloaded" in log_path.read_bytes(), "the reload", proc)
            run = _discover(ctl_ns, "discover", "--multicast", "ff02::1:8470%vc", "--key-file", str(key_path),
                            "--expect", "1", "--timeout", "30", "--targets")
            assert (run.returncode, run.stdout) == (0, "[fe80::a%vc]:8470\n"), run.stderr
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
