"""Relays on loopback (issue 19): targets reached through a gateway agent, in-process.

Every agent here is real (its listener, session, gateway code and child processes); a
misbehaving gateway is the real one with one stream method overridden. The same
scenarios across network namespaces, where the targets really are unreachable
directly, are in test_relay_netns.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import pytest

from shoal.agent.config import KeyPolicy, TlsConfig
from shoal.agent.relay import RelayStream as GatewayStream
from shoal.agent.relay import Relays
from shoal.agent.server import Agent
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.pki import init_pki
from shoal.controller.remote import Command
from shoal.controller.result import Result
from shoal.controller.stdin import StdinSpool
from shoal.controller.targets import Target
from shoal.hostio.keyfile import write_key_file
from shoal.hostio.tls import client_context
from shoal.protocol.handshake import SharedKey
from tests.agent_pool import start_pool, stop_pool
from tests.agents import closed_port, running_agents, target_for
from tests.debris import marked, tokens_of
from tests.e2e.test_exec import Collect
from tests.gatewayfaults import Flipping, Recording, install, misbehaving
from tests.programs import SHOAL_AGENT
from tests.rawpeer import audit_events
from tests.waiting import wait_for_async

DEADLINE = 20.0
MIB = 1024 * 1024


def behind(gateway: Target, agents: list[Agent], prefix: str = "t") -> list[Target]:
    return [replace(target_for(a, f"{prefix}{i}"), via=gateway) for i, a in enumerate(agents)]


async def run(targets: list[Target], command: Command, options: ConnectOptions | None = None,
              stdin: StdinSpool | None = None) -> Collect:
    handler = Collect()
    async with options or ConnectOptions(timeout=DEADLINE) as opts:
        await Fleet(targets, opts).run(command, handler, stdin)
    return handler


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "gateway-audit.jsonl"


# -- the basics ---------------------------------------------------------------------------


async def test_targets_behind_a_gateway_run_over_one_connection_to_it(audit: Path) -> None:
    async with running_agents(1, audit_log=str(audit)) as (gw,), running_agents(6) as targets:
        handler = await run(behind(target_for(gw, "gw"), targets), Command(shell="echo $SHOAL_HOST; exit 3"))
        await wait_for_async(lambda: len(audit_events(audit, event="relay_end")) == 6, timeout=DEADLINE)
    assert {host: bytes(out) for host, out in handler.out.items()} == {f"t{i}": f"t{i}\n".encode() for i in range(6)}
    assert {r.status for r in handler.results.values()} == {3}
    assert len(audit_events(audit, event="authenticated")) == 1  # one connection carried all six
    relays = audit_events(audit, event="relay")
    assert sorted(e["destination"] for e in relays) == sorted(
        f"127.0.0.1:{t.addresses[0].rpartition(':')[2]}" for t in targets)


async def test_every_host_behind_an_unreachable_gateway_fails_saying_via_and_the_others_run() -> None:
    dead = Target("gw1", "127.0.0.1", closed_port())
    async with running_agents(3) as agents:
        targets = [*behind(dead, agents[:2]), target_for(agents[2], "direct")]
        handler = await run(targets, Command(shell="echo ran"))
    for host in ("t0", "t1"):
        result = handler.results[host]
        assert (result.status, result.outcome, result.error) == (255, "unreachable", "via gw1: connection refused")
    assert handler.results["direct"].ok and handler.out["direct"] == b"ran\n"


async def test_a_target_the_gateway_cannot_reach_fails_alone() -> None:
    async with running_agents(2) as (gw, ok):
        gateway = target_for(gw, "gw")
        targets = [replace(target_for(ok, "up"), via=gateway), Target("down", "127.0.0.1", closed_port(), via=gateway)]
        handler = await run(targets, Command(shell="echo ran"))
    assert handler.results["up"].ok
    down = handler.results["down"]
    assert (down.status, down.outcome, down.error) == (255, "unreachable", "connection refused (relayed by gw)")


async def test_a_chain_reaches_the_second_gateway_through_the_first(tmp_path: Path) -> None:
    logs = [tmp_path / "gw1.jsonl", tmp_path / "gw2.jsonl"]
    async with running_agents(1, audit_log=str(logs[0])) as (gw1,), \
            running_agents(1, audit_log=str(logs[1])) as (gw2,), running_agents(2) as targets:
        second = replace(target_for(gw2, "gw2"), via=target_for(gw1, "gw1"))
        handler = await run(behind(second, targets), Command(shell="echo far"))
    assert [handler.out[f"t{i}"] for i in range(2)] == [b"far\n", b"far\n"]
    assert [e["destination"] for e in audit_events(logs[0], event="relay")] == [gw2.addresses[0]]
    assert len(audit_events(logs[1], event="relay")) == 2


async def test_a_unix_socket_target_is_relayed_too(tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    async with running_agents(1) as (gw,), running_agents(1, listen=(f"unix:{sock}",)) as (target,):
        handler = await run([replace(target_for(target, "sock"), via=target_for(gw, "gw"))], Command(argv=["pwd"]))
    assert handler.results["sock"].ok and handler.out["sock"].endswith(b"\n")


async def test_a_connection_holds_at_most_max_relays_streams() -> None:
    async with running_agents(1, **{"limits.max_relays": 1}) as (gw,), running_agents(2) as targets:
        handler = await run(behind(target_for(gw, "gw"), targets), Command(shell="sleep 0.2"))
    outcomes = sorted((r.ok, r.error or "") for r in handler.results.values())
    assert outcomes[1] == (True, "")
    assert outcomes[0][0] is False and "too many relays on this connection (limit 1)" in outcomes[0][1]


# -- what reaches the targets' processes --------------------------------------------------


async def test_timeouts_and_cancel_reach_the_targets_process_trees() -> None:
    async with running_agents(1) as (gw,), running_agents(2) as targets:
        relayed = behind(target_for(gw, "gw"), targets)
        handler = await run(relayed, Command(shell="sleep 60 & sleep 60", timeout=0.5))
        assert {(r.outcome, r.timed_out) for r in handler.results.values()} == {("timed_out", True)}
        async with ConnectOptions(timeout=DEADLINE) as options:
            fleet = Fleet(relayed, options)
            collect = Collect()
            running = asyncio.create_task(fleet.run(Command(shell="sleep 60 & sleep 60"), collect))
            tokens = await wait_for_async(lambda: [t for a in targets for t in tokens_of(a)] if
                                 all(tokens_of(a) for a in targets) else None, timeout=DEADLINE)
            fleet.cancel(grace=0.2)
            await asyncio.wait_for(running, DEADLINE)
        assert isinstance(tokens, list)
        await wait_for_async(lambda: not any(marked(t) for t in tokens), timeout=DEADLINE)
    assert {r.outcome for r in collect.results.values()} == {"cancelled"}


async def test_a_gateway_that_dies_makes_its_hosts_lost_and_their_commands_end() -> None:
    gateway, port = start_pool("127.0.0.1")  # an agent in a process of its own, to kill
    assert port, "the gateway did not start"
    try:
        async with running_agents(3) as targets:
            collect = Collect()
            options = ConnectOptions(timeout=DEADLINE)
            fleet = Fleet(behind(Target("gw", "127.0.0.1", port), targets), options)
            running = asyncio.create_task(fleet.run(Command(shell="sleep 60"), collect))
            await wait_for_async(lambda: all(tokens_of(a) for a in targets), timeout=DEADLINE)
            tokens = [t for a in targets for t in tokens_of(a)]
            gateway.kill()
            await asyncio.wait_for(running, DEADLINE)
            await options.close()
            await wait_for_async(lambda: not any(marked(t) for t in tokens), timeout=DEADLINE)
    finally:
        gateway.kill()
        stop_pool(gateway)
    assert {(r.outcome, r.status) for r in collect.results.values()} == {("lost", 255)}
    assert all(r.error is not None and "via gw" in r.error for r in collect.results.values())


# -- never an open proxy ---------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[SharedKey, str]]:
    out = {}
    for name in ("admin", "norelay", "narrow", "nowhere"):
        path = tmp_path / "keys" / f"{name}.key"
        path.parent.mkdir(exist_ok=True, mode=0o700)
        out[name] = (write_key_file(path), str(path))
    return out


async def test_relaying_needs_the_right_and_the_destination_on_the_keys_list(
        keys: dict[str, tuple[SharedKey, str]], audit: Path) -> None:
    async with running_agents(2) as (allowed, other):
        allowed_port = int(allowed.addresses[0].rpartition(":")[2])
        policies = (
            KeyPolicy("admin", keys["admin"][1], allow_all=True),
            KeyPolicy("norelay", keys["norelay"][1], commands=("true",)),
            KeyPolicy("narrow", keys["narrow"][1], relay=(f"127.0.0.0/8:{allowed_port}",)),
            KeyPolicy("nowhere", keys["nowhere"][1], allow_all=True, relay=()),
        )
        async with running_agents(1, policies=policies, audit_log=str(audit)) as (gw,):
            def via_gateway_with(name: str) -> ConnectOptions:
                key = keys[name][0]
                return ConnectOptions(timeout=DEADLINE, key_for=lambda t: key if t.name == "gw" else None)

            gateway = target_for(gw, "gw")
            targets = [replace(target_for(allowed, "allowed"), via=gateway),
                       replace(target_for(other, "other"), via=gateway)]
            outcomes = {}
            for name in ("admin", "norelay", "narrow", "nowhere"):
                handler = await run(targets, Command(shell="echo ran"), via_gateway_with(name))
                outcomes[name] = {host: (r.outcome, r.status) for host, r in handler.results.items()}
                if name == "narrow":
                    refused = handler.results["other"]
    ok, denied = ("ok", 0), ("denied", 255)
    assert outcomes == {"admin": {"allowed": ok, "other": ok},
                        "norelay": {"allowed": denied, "other": denied},
                        "narrow": {"allowed": ok, "other": denied},
                        "nowhere": {"allowed": denied, "other": denied}}
    narrow_id = keys["narrow"][0].key_id
    assert refused.error == (f"via gw: permission denied for key {narrow_id}: relay to {other.addresses[0]}: "
                             "destination not allowed")
    denials = audit_events(audit, event="denied", what="relay")
    assert len(denials) == 5
    assert {(e["key_id"], e["destination"]) for e in denials if e["key_id"] == narrow_id} == {
        (narrow_id, other.addresses[0])}


# -- end to end ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_with(relays: type[Relays], **overrides: object) -> AsyncIterator[Agent]:
    async with running_agents(1, **overrides) as (gw,):
        install(gw, relays)
        yield gw


async def test_a_gateway_that_alters_a_byte_fails_that_host_with_a_mac_error_and_nothing_else() -> None:
    key = SharedKey.generate()
    async with running_agents(2, keys=[key]) as (victim, bystander):
        victim_port = int(victim.addresses[0].rpartition(":")[2])
        async with gateway_with(misbehaving(Flipping, victim_port)) as gw:
            targets = behind(target_for(gw, "gw"), [victim, bystander])
            handler = await run(targets, Command(shell="echo ran"), ConnectOptions(
                timeout=DEADLINE, key_for=lambda t: key if t.name != "gw" else None))
    hurt, fine = handler.results["t0"], handler.results["t1"]
    assert (hurt.status, hurt.outcome) == (255, "lost")  # the frame dropped was the EXEC: nothing ran
    assert hurt.error == "agent error bad_mac: frame 0 failed its MAC check (tampered, replayed, reordered or reflected)"
    assert fine.ok and handler.out["t1"] == b"ran\n"
    assert b"ran" not in handler.out.get("t0", b"")


async def test_with_tls_the_gateway_forwards_only_what_it_cannot_read(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", ["agent.example"])
    tls = TlsConfig(cert=str(pki["agent_cert"]), key=str(pki["agent_key"]), ca=str(pki["ca_cert"]))
    ctx = client_context(pki["controller_cert"], pki["controller_key"], pki["ca_cert"])
    secret = "relay-secret-7f3a"
    results = {}
    for use_tls in (False, True):
        Recording.seen = bytearray()
        async with gateway_with(misbehaving(Recording)) as gw, \
                running_agents(1, **({"tls": tls} if use_tls else {})) as (target,):
            options = ConnectOptions(timeout=DEADLINE, ssl_for=lambda t: ctx if use_tls and t.name != "gw" else None)
            handler = await run(behind(target_for(gw, "gw"), [target]), Command(argv=["echo", secret]), options)
        results[use_tls] = (bytes(handler.out["t0"]), secret.encode() in Recording.seen, len(Recording.seen))
    assert results[False][:2] == (f"{secret}\n".encode(), True)  # the recorder does see plain bytes
    assert results[True][:2] == (f"{secret}\n".encode(), False)
    assert results[True][2] > 0


# -- flow control --------------------------------------------------------------------------------


async def test_a_stalled_target_does_not_hold_up_another_behind_the_same_gateway(tmp_path: Path) -> None:
    # The stalled target takes 64 MiB of stdin in flight, so only the relay's own
    # window stands between its stall and the gateway's memory.
    port = closed_port()
    log = tmp_path / "stalled.log"
    with open(log, "wb") as err:
        stalled = subprocess.Popen([*SHOAL_AGENT, "--listen", f"127.0.0.1:{port}",
                                    "--stdin-window", str(64 * MIB), "--state-dir", str(tmp_path / "state")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                   cwd=str(Path(__file__).resolve().parents[2]))
    read_fd, write_fd = os.pipe()
    spool: StdinSpool | None = None
    try:
        await wait_for_async(lambda: b"listening on" in log.read_bytes(), timeout=DEADLINE)
        async with running_agents(1) as (gw,), running_agents(1) as (fast,):
            gateway = target_for(gw, "gw")
            targets = [Target("stalled", "127.0.0.1", port, via=gateway), replace(target_for(fast, "fast"), via=gateway)]
            collect = Collect()
            async with ConnectOptions(timeout=DEADLINE) as options:
                spool = StdinSpool.from_fd(read_fd)
                running = asyncio.create_task(Fleet(targets, options).run(
                    Command(shell="echo ready; cat >/dev/null; echo done"), collect, spool))
                await wait_for_async(lambda: all(b"ready" in collect.out.get(h, b"") for h in ("stalled", "fast")),
                            timeout=DEADLINE)
                os.kill(stalled.pid, signal.SIGSTOP)
                await asyncio.to_thread(_write_all, write_fd, 32 * MIB)
                fast_result = await wait_for_async(lambda: collect.results.get("fast"), timeout=DEADLINE)
                assert "stalled" not in collect.results
                held = [s.transport.get_write_buffer_size() for session in gw.sessions
                        for s in session.requests.values() if isinstance(s, GatewayStream) and s.transport]
                os.kill(stalled.pid, signal.SIGCONT)
                await asyncio.wait_for(running, DEADLINE)
    finally:
        if spool is not None:
            spool.close()
        os.close(read_fd)
        os.kill(stalled.pid, signal.SIGCONT)
        stalled.kill()
        stalled.wait()
    assert isinstance(fast_result, Result) and fast_result.ok and collect.out["fast"] == b"ready\ndone\n"
    assert len(held) == 1 and held[0] <= gw.config.limits.relay_window  # all the gateway keeps for it
    assert collect.results["stalled"].ok and collect.out["stalled"] == b"ready\ndone\n"


def _write_all(fd: int, size: int) -> None:
    chunk = b"x" * MIB
    try:
        for _ in range(size // len(chunk)):
            os.write(fd, chunk)
    finally:
        os.close(fd)
