"""Discovery over UDP: the datagram format, the agent's responder, the controller's judge.

Loopback tests give each agent its own 127.0.0.x address, so several can share
one discovery port. The broadcast test builds a small private network of
namespaces on a bridge (root only) and removes it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from typing import Any, Iterator

import pytest

from shoal.agent.responder import PER_SOURCE_BURST, PER_SOURCE_RATE, bind_host
from shoal.hostio.keyfile import write_key_file
from shoal.agent.server import software_version
from shoal.controller.cli.main import main
from shoal.controller.probe import DiscoveryClient, subnet_addresses
from shoal.protocol.discovery import (
    MAX_NAME_BYTES,
    MAX_REPLY_SIZE,
    PROBE_SIZE,
    decode_probe,
    decode_reply,
    encode_probe,
    encode_reply,
)
from shoal.protocol.errors import ConfigError, RemoteProtocolError
from shoal.protocol.handshake import SharedKey, new_nonce
from tests.agents import running_agents
from tests.waiting import wait_for, wait_for_async
from tests.programs import SHOAL, SHOAL_AGENT

KEY = SharedKey(b"k" * 32)
OTHER = SharedKey(b"o" * 32)


def _free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- wire format ------------------------------------------------------------------

@pytest.mark.parametrize("key", [None, KEY])
def test_probe_round_trip(key: SharedKey | None) -> None:
    nonce = new_nonce()
    data = encode_probe(nonce, key)
    probe = decode_probe(data)
    assert len(data) == PROBE_SIZE and probe.nonce == nonce
    assert probe.key_id == (key.key_id if key else None)
    assert probe.verify(KEY) is (key is KEY)
    assert not probe.verify(OTHER)


@pytest.mark.parametrize("key", [None, KEY])
def test_reply_round_trip(key: SharedKey | None) -> None:
    nonce = new_nonce()
    reply = decode_reply(encode_reply(nonce, 8470, "web01", "shoal-agent/1.0", key))
    assert (reply.nonce, reply.port, reply.name, reply.version) == (nonce, 8470, "web01", "shoal-agent/1.0")
    assert reply.key_id == (key.key_id if key else None)
    assert reply.verify(KEY) is (key is KEY)


def test_largest_reply_fits_in_a_probe() -> None:
    reply = encode_reply(new_nonce(), 65535, "n" * MAX_NAME_BYTES, "v" * 64, KEY)
    assert len(reply) == MAX_REPLY_SIZE <= PROBE_SIZE == len(encode_probe(new_nonce(), KEY))


def test_any_change_to_a_keyed_reply_breaks_its_mac() -> None:
    data = encode_reply(new_nonce(), 8470, "web01", "v1", KEY)
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            reply = decode_reply(bytes(tampered))
        except RemoteProtocolError:
            continue
        assert not reply.verify(KEY), f"flipping byte {i} went unnoticed"


def test_garbage_is_refused_at_every_length() -> None:
    probe = encode_probe(new_nonce(), KEY)
    reply = encode_reply(new_nonce(), 1, "a", "b", KEY)
    for cut in range(len(probe)):
        with pytest.raises(RemoteProtocolError):
            decode_probe(probe[:cut])
    for cut in range(len(reply)):
        with pytest.raises(RemoteProtocolError):
            decode_reply(reply[:cut])
    with pytest.raises(RemoteProtocolError):
        decode_reply(reply + b"\0")
    with pytest.raises(RemoteProtocolError):
        decode_probe(probe[:-1] + b"\1")  # non-zero padding
    with pytest.raises(RemoteProtocolError):
        decode_reply(probe)  # a probe is not a reply


def test_subnet_addresses() -> None:
    assert subnet_addresses("127.0.0.4/30") == ["127.0.0.5", "127.0.0.6"]
    assert subnet_addresses("127.0.0.9/32") == ["127.0.0.9"]
    assert subnet_addresses("::1/128") == ["::1"]
    for bad in ("10.0.0.0/8", "fd00::/64", "nonsense"):
        with pytest.raises(ConfigError):
            subnet_addresses(bad)


def test_agent_answers_on_loopback_only_when_listening_there() -> None:
    assert bind_host(("127.0.0.5:0",)) == "127.0.0.5"
    assert bind_host(("127.0.0.5:0", "unix:/tmp/x")) == "127.0.0.5"
    assert bind_host(("0.0.0.0:8470",)) == "0.0.0.0"
    assert bind_host(("10.1.2.3:8470", "127.0.0.1:8470")) == "0.0.0.0"


# -- agent responder on loopback ---------------------------------------------------

def discovery(address: str, port: int, name: str = "", enabled: bool = True) -> dict[str, object]:
    """Agent settings (for the agents fixtures): listen on `address`, answer discovery on `port` there as `name`."""
    return {"listen": (f"{address}:0",), "discovery.enabled": enabled, "discovery.port": port, "discovery.name": name}


class Prober(asyncio.DatagramProtocol):
    """A test socket that sends raw datagrams and queues what comes back."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> Prober:
        _, p = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(host, 0))
        return p

    async def ask(self, data: bytes, dest: tuple[str, int]) -> bytes:
        self.transport.sendto(data, dest)
        return await asyncio.wait_for(self.replies.get(), 10)


async def _answered_nothing(prober: Prober, dest: tuple[str, int]) -> None:
    """Prove nothing is queued: a valid probe now gets the very next reply.

    The agent handles datagrams in order, so its answer to this probe comes
    after any answer to what we sent before.
    """
    nonce = new_nonce()
    reply = decode_reply(await prober.ask(encode_probe(nonce, KEY), dest))
    assert reply.nonce == nonce


async def test_keyed_unkeyed_and_foreign_probes() -> None:
    port = _free_udp_port("127.0.0.11")
    dest = ("127.0.0.11", port)
    async with running_agents(keys=[KEY], **discovery("127.0.0.11", port, "db-7")) as (agent,):
        prober = await Prober.open()
        try:
            nonce = new_nonce()
            keyed = decode_reply(await prober.ask(encode_probe(nonce, KEY), dest))
            assert (keyed.name, keyed.key_id, keyed.nonce) == ("db-7", KEY.key_id, nonce) and keyed.verify(KEY)
            assert keyed.port == int(agent.addresses[0].rpartition(":")[2])
            assert keyed.version == f"shoal-agent/{software_version()}"
            bare = decode_reply(await prober.ask(encode_probe(new_nonce()), dest))
            assert (bare.name, bare.port, bare.key_id, bare.mac) == ("db-7", keyed.port, None, b"")
            # A probe under a key the agent lacks, a probe whose MAC was
            # tampered with, and a short probe: all unanswered.
            prober.transport.sendto(encode_probe(new_nonce(), OTHER), dest)
            forged = bytearray(encode_probe(new_nonce(), KEY))
            forged[60] ^= 1
            prober.transport.sendto(bytes(forged), dest)
            prober.transport.sendto(encode_probe(new_nonce(), KEY)[:80], dest)
            await _answered_nothing(prober, dest)
            assert prober.replies.empty()
        finally:
            prober.transport.close()


async def test_reply_is_never_larger_than_the_probe() -> None:
    port = _free_udp_port("127.0.0.12")
    dest = ("127.0.0.12", port)
    long_name = "é" * 253  # 506 bytes of UTF-8: cut to fit
    async with running_agents(keys=[KEY], **discovery("127.0.0.12", port, long_name)):
        prober = await Prober.open()
        try:
            probe = encode_probe(new_nonce(), KEY)
            data = await prober.ask(probe, dest)
        finally:
            prober.transport.close()
    reply = decode_reply(data)
    assert len(data) <= len(probe)
    assert long_name.startswith(reply.name) and len(reply.name.encode()) <= MAX_NAME_BYTES


async def test_reply_rate_limit_per_source_holds() -> None:
    port = _free_udp_port("127.0.0.13")
    dest = ("127.0.0.13", port)
    burst = 40
    async with running_agents(keys=[KEY], **discovery("127.0.0.13", port)):
        # A plain socket for the flood: once the agent has answered the probe
        # that came after the flood, every flood reply it sent is already in
        # this socket's kernel queue (loopback delivers inside sendto).
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.1", 0))
        flood.setblocking(False)
        other = await Prober.open("127.0.0.2")
        try:
            started = time.monotonic()
            for _ in range(burst):
                flood.sendto(encode_probe(new_nonce(), KEY), dest)
            await _answered_nothing(other, dest)  # another source is still served
            elapsed = time.monotonic() - started
            answered = 0
            with contextlib.suppress(BlockingIOError):
                while flood.recv(2048):
                    answered += 1
        finally:
            flood.close()
            other.transport.close()
    allowed = PER_SOURCE_BURST + int(PER_SOURCE_RATE * elapsed) + 1
    assert 1 <= answered <= min(allowed, burst), (answered, elapsed)
    assert answered < burst


# -- controller judging replies ---------------------------------------------------

class Forger(asyncio.DatagramProtocol):
    """Answers every probe with whatever `make(probe)` returns."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.sent = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(self.make(decode_probe(data)), addr)
        self.sent += 1


async def _forger(host: str, port: int, make: Any) -> Forger:
    _, forger = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Forger(make), local_addr=(host, port))
    return forger


async def test_forged_and_replayed_replies_are_dropped() -> None:
    port = _free_udp_port("127.0.0.14")
    async with running_agents(keys=[KEY], **discovery("127.0.0.14", port, "real")):
        # A reply the real agent gave to an earlier probe: genuine, but stale.
        prober = await Prober.open()
        recorded = await prober.ask(encode_probe(new_nonce(), KEY), ("127.0.0.14", port))
        prober.transport.close()

        def bad_mac(probe: Any) -> bytes:
            data = bytearray(encode_reply(probe.nonce, 1, "evil", "x", OTHER))
            data[40:48] = bytes.fromhex(KEY.key_id)  # claim our key, MAC made with another
            return bytes(data)

        def unsigned(probe: Any) -> bytes:
            return encode_reply(probe.nonce, 2, "evil", "x")

        forgers = [await _forger("127.0.0.15", port, bad_mac), await _forger("127.0.0.16", port, lambda p: recorded),
                   await _forger("127.0.0.17", port, unsigned)]
        client = await DiscoveryClient.open(KEY)
        try:
            for host in ("127.0.0.14", "127.0.0.15", "127.0.0.16", "127.0.0.17"):
                client.probe(host, port)
            await wait_for_async(lambda: len(client.result.found) + len(client.result.ignored) >= 4, what="four replies")
        finally:
            client.close()
            for f in forgers:
                f.transport.close()
    assert [(f.name, f.address, f.key_id) for f in client.result.found] == [("real", "127.0.0.14", KEY.key_id)]
    reasons = dict(client.result.ignored)
    assert reasons["127.0.0.15"].startswith("bad MAC")
    assert reasons["127.0.0.16"].startswith("reply to a probe we did not send")
    assert reasons["127.0.0.17"] == "unauthenticated reply to a keyed probe"


async def test_reply_from_the_wrong_address_is_dropped() -> None:
    port = _free_udp_port("127.0.0.18")
    async with running_agents(keys=[KEY], **discovery("127.0.0.18", port)):
        client = await DiscoveryClient.open(KEY)
        relay_to = client.local_address
        # A relay at .19 forwards the genuine answer for .18 as if it were its own.
        prober = await Prober.open("127.0.0.19")
        try:
            nonce_probe = []

            class Tap(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    nonce_probe.append(data)

            tap_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Tap, local_addr=("127.0.0.20", port))
            client.probe("127.0.0.20", port)
            await wait_for_async(lambda: nonce_probe, what="the probe to reach the tap")
            genuine = await prober.ask(nonce_probe[0], ("127.0.0.18", port))
            prober.transport.sendto(genuine, ("127.0.0.1", relay_to[1]))
            await wait_for_async(lambda: client.result.ignored, what="the relayed reply")
        finally:
            tap_transport.close()
            prober.transport.close()
            client.close()
    assert client.result.found == []
    assert client.result.ignored == [("127.0.0.19", "reply to the probe sent to 127.0.0.20 came from elsewhere")]


# -- shoal discover on loopback ------------------------------------------------------

def test_shoal_discover_unicast_lists_agents(tmp_path, capsys, start_agents) -> None:
    key_path = tmp_path / "fleet.key"
    key = write_key_file(key_path)
    port = _free_udp_port("127.0.0.21")
    agents = [start_agents(keys=[key], **discovery(host, port, f"node{i + 1}"))
              for i, host in enumerate(("127.0.0.21", "127.0.0.22"))]
    status = main(["discover", "--subnet", "127.0.0.20/30", "--port", str(port), "--timeout", "30",
                   "--key-file", str(key_path), "--expect", "2"])
    out, err = capsys.readouterr()
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "PORT", "VERSION", "KEY"]
    version = f"shoal-agent/{software_version()}"
    expected = [["node1", "127.0.0.21", agents[0].addresses[0].rpartition(":")[2], version, key.key_id],
                ["node2", "127.0.0.22", agents[1].addresses[0].rpartition(":")[2], version, key.key_id]]
    assert [line.split() for line in lines[1:]] == expected
    assert "2 agents answered" in err
    assert main(["discover", "--subnet", "127.0.0.21/32", "--port", str(port), "--targets"]) == 0
    assert capsys.readouterr().out == agents[0].addresses[0] + "\n"


def test_shoal_discover_finding_nothing_exits_1(capsys) -> None:
    port = _free_udp_port("127.0.0.23")
    assert main(["discover", "--subnet", "127.0.0.23/32", "--port", str(port), "--timeout", "0.2"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["NAME  ADDRESS  PORT  VERSION  KEY"]
    assert "0 agents answered 1 probe" in err


# -- broadcast and multicast across network namespaces (root) -------------------------

NETNS_REASON = "needs root and iproute2 to build network namespaces"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def private_lan(agents: int) -> Iterator[tuple[str, list[str]]]:
    """A controller namespace with a bridge and `agents` namespaces hanging off it.

    Yields (controller netns, agent netns names); everything uses 10.213.7.0/24
    and exists only inside these namespaces, removed on exit.
    """
    tag = f"sd{os.getpid() % 100000}"
    ctl = f"{tag}c"
    names = [f"{tag}a{i}" for i in range(agents)]
    try:
        for ns in (ctl, *names):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ctl, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", ctl, "addr", "add", "10.213.7.1/24", "brd", "+", "dev", "br0")
        _ip("-n", ctl, "link", "set", "br0", "up")
        _ip("-n", ctl, "route", "add", "224.0.0.0/4", "dev", "br0")
        for i, ns in enumerate(names):
            _ip("-n", ctl, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", ctl, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"10.213.7.{11 + i}/24", "brd", "+", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield ctl, names
    finally:
        for ns in (ctl, *names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _udp_bound(ns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/udp"], capture_output=True, text=True,
                         timeout=20).stdout
    return f":{port:04X} " in out


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason=NETNS_REASON)
def test_agents_in_namespaces_answer_broadcast_and_multicast(tmp_path) -> None:
    key_path = tmp_path / "lan.key"
    key = write_key_file(key_path)
    procs: list[subprocess.Popen[bytes]] = []
    with private_lan(2) as (ctl, names):
        try:
            for i, ns in enumerate(names):
                state = tmp_path / f"state{i}"
                state.mkdir()
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, *SHOAL_AGENT, "--listen", "0.0.0.0:8470",
                     "--key-file", str(key_path), "--discovery", "--state-dir", str(state),
                     "--log-level", "warning"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            def started() -> bool:
                assert all(p.poll() is None for p in procs), "an agent exited"
                return all(_udp_bound(ns, 8470) for ns in names)
            wait_for(started, timeout=30, what="the agents to start")
            for how in (["--broadcast"], ["--multicast"]):
                run = subprocess.run(
                    ["ip", "netns", "exec", ctl, *SHOAL, "discover", *how,
                     "--key-file", str(key_path), "--expect", "2", "--timeout", "30"],
                    capture_output=True, text=True, timeout=60)
                assert run.returncode == 0, run.stderr
                rows = sorted(line.split() for line in run.stdout.splitlines()[1:])
                assert [(r[1], r[2], r[4]) for r in rows] == [("10.213.7.11", "8470", key.key_id),
                                                               ("10.213.7.12", "8470", key.key_id)], how
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
