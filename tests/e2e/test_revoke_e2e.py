"""A reload that removes or narrows a key reaches the connections already open (issue 13, point 5).

Removing a key revokes its connections: every new request is refused, running
commands get the kill grace to end, and the connection closes once they have.
Narrowing a key's policy refuses what the new policy forbids from the next request
on, and leaves the connection open. Real agents on loopback; the first test
reloads a real `shoal-agent` with SIGHUP.
"""

from __future__ import annotations

import signal
from pathlib import Path

from shoal.agent.config import KeyPolicy
from shoal.hostio.keyfile import write_key_file
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.protocol.messages import Goodbye
from tests.agents import AgentThread, config, running_agents, target_for
from tests.waiting import wait_for, wait_for_async
from tests.rawpeer import DEADLINE, RawController, audit_events
from tests.e2e.test_lifecycle import AgentProcess

ENTRY = '[[keys]]\nname = "{0}"\nfile = "{1}"\nallow = "all"\n'
WAIT_FOR_FLAG = "echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after"


def events(audit: Path) -> list[str]:
    return [e["event"] for e in audit_events(audit)]


async def test_a_removed_key_gets_no_new_command_and_is_closed_after_its_running_one(tmp_path: Path) -> None:
    keep, drop = (write_key_file(tmp_path / f"{name}.key") for name in ("keep", "drop"))
    conf, audit, flag = tmp_path / "agent.toml", tmp_path / "audit.jsonl", tmp_path / "go"
    conf.write_text(ENTRY.format("keep", tmp_path / "keep.key") + ENTRY.format("drop", tmp_path / "drop.key"))
    agent = AgentProcess(tmp_path, "--config", str(conf), "--listen", "127.0.0.1:0", "--audit-log", str(audit),
                         "--log-level", "info")
    try:
        target = agent.target()
        client = await AgentClient.connect(target, key=drop, timeout=10)
        try:
            running = await client.exec(Command(shell=WAIT_FOR_FLAG.format(flag=flag)))
            conf.write_text(ENTRY.format("keep", tmp_path / "keep.key"))
            agent.proc.send_signal(signal.SIGHUP)
            await wait_for_async(lambda: "revoked" in events(audit), timeout=10)
            refused = await (await client.exec(Command(shell=f"touch {tmp_path / 'new'}"))).wait()
            assert refused.error_code == "permission_denied"
            assert refused.error == f"permission denied for key {drop.key_id}: key revoked"
            assert client.close_reason is None  # still open: a command runs
            flag.touch()
            out = b"".join([e.data async for e in running])
            assert (out, (await running.wait()).status) == (b"before\nafter\n", 0)
            await wait_for_async(lambda: client.close_reason, timeout=10)
            assert client.close_reason == "agent closed the connection: key revoked"
        finally:
            await client.close()
        survivor = await AgentClient.connect(target, key=keep, timeout=10)
        await survivor.close()
    finally:
        agent.stop()
    assert not (tmp_path / "new").exists()
    [revoked] = audit_events(audit, event="revoked")
    assert (revoked["key_id"], revoked["running"]) == (drop.key_id, 1)
    assert audit_events(audit, event="denied", key_id=drop.key_id)[0]["reason"] == "key revoked"
    assert [e for e in events(audit) if e in ("revoked", "denied", "exit", "revoked_closed")] == [
        "revoked", "denied", "exit", "revoked_closed"]


async def test_a_revoked_key_commands_are_killed_after_the_kill_grace(tmp_path: Path) -> None:
    key = write_key_file(tmp_path / "k.key")
    audit = tmp_path / "audit.jsonl"
    policy = KeyPolicy("k", str(tmp_path / "k.key"), allow_all=True)
    settings = {"audit_log": str(audit), "limits.kill_grace": 0.2}
    async with running_agents(policies=(policy,), **settings) as (agent,):
        client = await AgentClient.connect(target_for(agent), key=key, timeout=10)
        try:
            stubborn = await client.exec(Command(shell="echo up; exec sleep 300"))
            agent.reload(config(**settings), [])
            result = await stubborn.wait()
            reason = await wait_for_async(lambda: client.close_reason, timeout=10)
        finally:
            await client.close()
    assert result.status == 128 + signal.SIGTERM
    assert reason == "agent closed the connection: key revoked"
    assert "revoked_closed" in events(audit)


async def test_a_narrowed_policy_refuses_from_the_next_request_and_keeps_the_connection(tmp_path: Path) -> None:
    monitor = write_key_file(tmp_path / "monitor.key")
    audit = tmp_path / "audit.jsonl"
    wide = KeyPolicy("monitor", str(tmp_path / "monitor.key"), commands=("echo one", "echo two"))
    narrow = KeyPolicy("monitor", str(tmp_path / "monitor.key"), commands=("echo one",))
    async with running_agents(policies=(wide,), audit_log=str(audit)) as (agent,):
        client = await AgentClient.connect(target_for(agent), key=monitor, timeout=10)
        try:
            assert (await (await client.exec(Command(shell="echo two"))).wait()).status == 0
            agent.reload(config(keys=(narrow,), audit_log=str(audit)), [])
            refused = await (await client.exec(Command(shell="echo two"))).wait()
            allowed = await (await client.exec(Command(shell="echo one"))).wait()
            assert client.close_reason is None
        finally:
            await client.close()
    assert refused.error_code == "permission_denied" and allowed.status == 0
    [changed] = audit_events(audit, event="policy_changed")
    assert (changed["key_id"], changed["key_name"]) == (monitor.key_id, "monitor")
    assert "revoked" not in events(audit)


def test_a_handshake_begun_before_the_reload_is_revoked_when_it_completes(tmp_path: Path) -> None:
    old, new = (write_key_file(tmp_path / f"{name}.key") for name in ("old", "new"))
    audit = tmp_path / "audit.jsonl"
    policies = {name: KeyPolicy(name, str(tmp_path / f"{name}.key"), allow_all=True) for name in ("old", "new")}
    with AgentThread(policies=(policies["old"],), audit_log=str(audit)) as thread:
        peer = RawController(thread.addresses[0], old)
        try:
            wait_for(lambda: audit_events(audit, event="accepted"), timeout=DEADLINE)  # its session holds the old keys
            thread.call(thread.agents[0].reload, config(keys=(policies["new"],), audit_log=str(audit)), [])
            peer.handshake()
            goodbye = peer.next_event()
            assert isinstance(goodbye, Goodbye) and goodbye.reason == "key revoked"
            assert peer.wait_closed()
        finally:
            peer.close()
    [revoked] = audit_events(audit, event="revoked")
    assert (revoked["key_id"], revoked["running"]) == (old.key_id, 0)
    assert audit_events(audit, event="exec") == []
