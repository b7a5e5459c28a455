"""Relays across network namespaces: targets the controller really cannot reach.

Three namespaces this test makes itself, joined by two veth pairs and nothing else:

    controller ns ──veth── gateway ns ──veth── target ns

The gateway namespace does not forward, so the target is reachable only from the
gateway. The agents are real `shoal-agent` processes (the gateway's keys have policies
in its agent.toml; two targets listen on ports 8470 and 8471 of one address); the
controller is the real `shoal` command run inside the controller namespace. Needs
root and `ip netns`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shoal.hostio.keyfile import write_key_file
from tests.programs import SHOAL, SHOAL_AGENT
from tests.rawpeer import audit_events
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists(),
                       reason="needs iproute2's `ip`"),
]

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
MIB = 1024 * 1024


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Topology:
    """The three namespaces, their addresses, keys and running agents."""

    tmp: Path
    tag: int = field(default_factory=os.getpid)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = (self.tag % 16384) * 4
        third, fourth = base >> 8, base & 255
        self.ctl, self.gw, self.tgt = (f"shoalr{c}{self.tag}" for c in "cgt")
        self.ctl_ip, self.gw_ip = f"10.214.{third}.{fourth + 1}", f"10.214.{third}.{fourth + 2}"
        self.gw_inner_ip, self.tgt_ip = f"10.215.{third}.{fourth + 1}", f"10.215.{third}.{fourth + 2}"
        self.keys = {name: self.tmp / f"{name}.key" for name in ("admin", "norelay", "narrow")}
        self.key_ids = {name: write_key_file(path).key_id for name, path in self.keys.items()}
        self.audit = {name: self.tmp / f"{name}-audit.jsonl" for name in ("gw", "t1", "t2")}

    @property
    def t1(self) -> str:
        return self.tgt_ip

    @property
    def t2(self) -> str:
        return f"{self.tgt_ip}:8471"

    def create(self) -> None:
        for ns in (self.ctl, self.gw, self.tgt):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        self._link(f"src{self.tag}", self.ctl, self.ctl_ip, f"sgc{self.tag}", self.gw, self.gw_ip)
        self._link(f"sgt{self.tag}", self.gw, self.gw_inner_ip, f"stg{self.tag}", self.tgt, self.tgt_ip)
        subprocess.run(["ip", "netns", "exec", self.gw, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True,
                       capture_output=True, timeout=10)

    @staticmethod
    def _link(left: str, left_ns: str, left_ip: str, right: str, right_ns: str, right_ip: str) -> None:
        _ip("link", "add", left, "netns", left_ns, "type", "veth", "peer", "name", right, "netns", right_ns)
        for name, ns, address in ((left, left_ns, left_ip), (right, right_ns, right_ip)):
            _ip("-n", ns, "addr", "add", f"{address}/30", "dev", name)
            _ip("-n", ns, "link", "set", name, "up")

    def delete(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for ns in (self.ctl, self.gw, self.tgt):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def start(self, ns: str, name: str, *args: str, program: list[str] = SHOAL_AGENT,
              ready: bytes = b"listening on") -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *program, *args],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=REPO)
        self.procs.append(proc)
        wait_for(lambda: ready in log.read_bytes() or proc.poll() is not None, timeout=DEADLINE, what=f"{name} to start")
        assert proc.poll() is None, log.read_text()
        return proc

    def start_agents(self) -> None:
        config = self.tmp / "gw.toml"
        config.write_text(f'''
            [[keys]]
            name = "admin"
            file = "{self.keys['admin']}"
            allow = "all"

            [[keys]]
            name = "norelay"
            file = "{self.keys['norelay']}"
            allow = "listed"
            commands = ["true"]

            [[keys]]
            name = "narrow"
            file = "{self.keys['narrow']}"
            allow = "listed"
            relay = ["{self.tgt_ip}/32:8471"]
        '''.replace("\n            ", "\n"))
        self.start(self.gw, "gw", "--config", str(config), "--listen", f"{self.gw_ip}:8470",
                   "--audit-log", str(self.audit["gw"]), "--state-dir", str(self.tmp / "gw-state"))
        self.targets = [self.start(self.tgt, name, "--listen", f"{self.tgt_ip}:{port}",
                                   "--key-file", str(self.keys["admin"]), "--stdin-window", str(64 * MIB),
                                   "--audit-log", str(self.audit[name]), "--state-dir", str(self.tmp / name))
                        for name, port in (("t1", 8470), ("t2", 8471))]
        self.start(self.gw, "flipper", "--listen", f"{self.gw_ip}:8471", "--key-file", str(self.keys["admin"]),
                   "--flip-port", "8470", "--state-dir", str(self.tmp / "flipper"),
                   program=[sys.executable, "-m", "tests.gatewayfaults"], ready=b"listening")

    def shoal(self, *args: str, key: str = "admin", stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """`shoal ARGS` in the controller's namespace."""
        return subprocess.run(self._shoal(*args, key=key), input=stdin, capture_output=True, timeout=120, cwd=REPO)

    def _shoal(self, *args: str, key: str = "admin") -> list[str]:
        subcommand, *rest = args
        return ["ip", "netns", "exec", self.ctl, *SHOAL, subcommand,
                "--key-file", str(self.keys[key]), "--connect-timeout", "10", *rest]

    def gateway_key(self, name: str) -> Path:
        """An inventory giving the gateway key `name` (targets keep --key-file's)."""
        path = self.tmp / f"inventory-{name}.toml"
        path.write_text(f'[hosts."{self.gw_ip}"]\nkey_file = "{self.keys[name]}"\n')
        return path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"`ip netns` unavailable: {probe.stderr.decode().strip()}")
    topology = Topology(tmp_path_factory.mktemp("relay-netns"))
    try:
        topology.create()
        topology.start_agents()
        yield topology
    finally:
        topology.delete()


def events(out: bytes, kind: str) -> dict[str, dict[str, object]]:
    return {e["host"]: e for e in map(json.loads, out.splitlines()) if e["event"] == kind}


def test_a_direct_run_cannot_reach_the_targets_and_one_through_the_gateway_does(net: Topology) -> None:
    direct = net.shoal("run", f"{net.t1},{net.t2}", "-n", "--", "true")
    assert direct.returncode == 255
    assert f"shoal: {net.t1}: unreachable: Network is unreachable".encode() in direct.stderr
    relayed = net.shoal("run", f"{net.t1},{net.t2}", "-n", "--via", net.gw_ip, "-o", "json", "--",
                        "echo $SHOAL_HOST")
    assert relayed.returncode == 0, relayed.stderr
    output = {h: e["data"] for h, e in events(relayed.stdout, "output").items()}
    assert output == {net.t1: f"{net.t1}\n", net.t2: f"{net.t2}\n"}
    # The targets were reached from the gateway's side, with the key they hold: end to end.
    for name in ("t1", "t2"):
        seen = audit_events(net.audit[name], event="authenticated")
        assert {e["peer"].rpartition(":")[0] for e in seen} == {net.gw_inner_ip}
        assert {e["key_id"] for e in seen} == {net.key_ids["admin"]}


def test_put_get_and_ping_through_the_gateway(net: Topology) -> None:
    source = net.tmp / "payload"
    source.write_bytes(os.urandom(3 * MIB))
    put = net.shoal("put", net.t1, str(source), str(net.tmp / "put-copy"), "--via", net.gw_ip)
    assert put.returncode == 0, put.stderr
    assert (net.tmp / "put-copy").read_bytes() == source.read_bytes()  # one filesystem, three networks
    got = net.shoal("get", net.t2, str(source), str(net.tmp / "fetched"), "--via", net.gw_ip)
    assert got.returncode == 0, got.stderr
    assert [p.read_bytes() for p in (net.tmp / "fetched").rglob("payload")] == [source.read_bytes()]
    ping = net.shoal("ping", f"{net.t1},{net.t2}", "--via", net.gw_ip, "-c", "2", "--json")
    assert ping.returncode == 0, ping.stderr
    assert [json.loads(line)["ok"] for line in ping.stdout.splitlines()] == [True, True]


def test_a_gateway_key_without_the_relay_right_is_refused_and_audited(net: Topology) -> None:
    run = net.shoal("run", net.t1, "-n", "--via", net.gw_ip, "--inventory", str(net.gateway_key("norelay")),
                    "-o", "json", "--", "true")
    assert run.returncode == 255
    exit_ = events(run.stdout, "exit")[net.t1]
    assert exit_["outcome"] == "denied"
    assert exit_["error"] == (f"via {net.gw_ip}: permission denied for key {net.key_ids['norelay']}: "
                              f"relay to {net.tgt_ip}:8470: relaying not allowed")
    denied = audit_events(net.audit["gw"], event="denied", what="relay", key_id=net.key_ids["norelay"])
    assert [e["destination"] for e in denied] == [f"{net.tgt_ip}:8470"]


def test_a_destination_outside_the_keys_list_is_refused_and_one_inside_it_is_not(net: Topology) -> None:
    run = net.shoal("run", f"{net.t1},{net.t2}", "-n", "--via", net.gw_ip,
                    "--inventory", str(net.gateway_key("narrow")), "-o", "json", "--", "true")
    exits = events(run.stdout, "exit")
    assert (exits[net.t1]["outcome"], exits[net.t2]["outcome"]) == ("denied", "ok")
    assert str(exits[net.t1]["error"]).endswith(f"relay to {net.tgt_ip}:8470: destination not allowed")
    denied = audit_events(net.audit["gw"], event="denied", what="relay", key_id=net.key_ids["narrow"])
    assert [e["destination"] for e in denied] == [f"{net.tgt_ip}:8470"]


def test_a_gateway_that_alters_one_byte_fails_that_host_with_a_mac_error(net: Topology) -> None:
    run = net.shoal("run", f"{net.t1},{net.t2}", "-n", "--via", f"{net.gw_ip}:8471", "-o", "json", "--", "echo ran")
    exits = events(run.stdout, "exit")
    assert exits[net.t2]["outcome"] == "ok" and events(run.stdout, "output")[net.t2]["data"] == "ran\n"
    assert exits[net.t1]["status"] == 255 and "bad_mac" in str(exits[net.t1]["error"])
    assert net.t1 not in events(run.stdout, "output")


def test_a_stalled_target_does_not_slow_another_behind_the_same_gateway(net: Topology) -> None:
    stalled = net.targets[0]
    with open(net.tmp / "stalled-run.err", "wb") as err, subprocess.Popen(
            net._shoal("run", f"{net.t1},{net.t2}", "--via", net.gw_ip, "-o", "json", "--",
                       "echo ready; cat >/dev/null; echo done"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=REPO) as proc:
        lines = Lines(proc)
        try:
            lines.until(lambda seen: {e["host"] for e in seen if e.get("data") == "ready\n"} == {net.t1, net.t2})
            os.kill(stalled.pid, signal.SIGSTOP)  # t1 stops reading: its stdin piles up behind it
            assert proc.stdin is not None
            for _ in range(32):
                proc.stdin.write(b"x" * MIB)
            proc.stdin.close()
            seen = lines.until(lambda seen: any(e["event"] == "exit" for e in seen))
            finished = {e["host"]: e for e in seen if e["event"] == "exit"}
            assert list(finished) == [net.t2] and finished[net.t2]["outcome"] == "ok"
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        seen = lines.until(lambda seen: sum(e["event"] == "exit" for e in seen) == 2)
        assert proc.wait(DEADLINE) == 0, (net.tmp / "stalled-run.err").read_text()
    assert {e["host"] for e in seen if e.get("data") == "done\n"} == {net.t1, net.t2}


class Lines:
    """JSON lines from a running `shoal -o json`, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buffer = b""
        self.seen: list[dict[str, object]] = []

    def until(self, done: object, deadline: float = DEADLINE) -> list[dict[str, object]]:
        assert self.proc.stdout is not None and callable(done)
        end = time.monotonic() + deadline
        while not done(self.seen):
            left = end - time.monotonic()
            assert left > 0, f"not seen in {deadline}s; got {self.seen}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            assert chunk or not ready, f"shoal ended early: {self.seen}"
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.seen += [json.loads(line) for line in complete if line]
        return self.seen
