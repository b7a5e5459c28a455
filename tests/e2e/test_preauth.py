"""Unauthenticated peers against a real agent (issue 13): memory, descriptors, slots, oracles.

Agents run as `shoal-agent` subprocesses where the process itself is measured (RSS,
file descriptor limit), on a thread otherwise; controllers are the real `shoal` CLI.
Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from shoal.hostio.keyfile import write_key_file
from shoal.controller.cli.main import main as shoal_main
from shoal.protocol.frames import DEFAULT_MAX_FRAME_SIZE, HEAD
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import MessageType
from tests.agents import AgentThread
from tests.waiting import wait_for
from tests.rawpeer import RawController, audit_events, untagged_frames
from tests.programs import SHOAL, SHOAL_AGENT

ROOT = Path(__file__).resolve().parents[2]
# Generous: a loaded 2-core box runs other suites beside this one.
DEADLINE = 30.0
MIB = 1024 * 1024


class AgentProcess:
    """`shoal-agent` with a key and an audit log, stderr kept in a file."""

    def __init__(self, tmp: Path, *args: str, nofile: tuple[int, int] | None = None) -> None:
        self.key_path = tmp / "admin.key"
        write_key_file(self.key_path)
        self.audit = tmp / "audit.jsonl"
        self.log = tmp / "agent.log"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*SHOAL_AGENT, "--listen", "127.0.0.1:0", "--key-file", str(self.key_path),
                 "--audit-log", str(self.audit), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT), env=env,
                preexec_fn=limit)
        found = wait_for(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text()), timeout=DEADLINE)
        assert isinstance(found, re.Match)
        self.port = int(found.group(1))
        self.ps = psutil.Process(self.proc.pid)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """The real `shoal run` against this agent, with its key."""
        return subprocess.run(
            [*SHOAL, "run", f"127.0.0.1:{self.port}", "--key-file", str(self.key_path), "--", *argv],
            capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(DEADLINE)
    sock.connect(("127.0.0.1", port))
    return sock


def _peers_accounted(audit: Path, peers: set[str]) -> set[str]:
    """The flood peers the agent has dealt with: refused, shed, or failed on a protocol error."""
    if not audit.exists():
        return set()
    done = set()
    for line in audit.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") in ("protocol_error", "shed", "refused") and event.get("peer") in peers:
            done.add(event["peer"])
    return done


# -- point 2: the pre-auth frame cap keeps memory flat ---------------------------------

FLOOD = 200
BODY_SENT = 64 * 1024  # of each declared 4 MiB HELLO body


def test_a_flood_of_huge_declared_hellos_costs_no_memory_and_a_controller_is_served(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    agent = AgentProcess(tmp_path, "--handshake-timeout", "60")
    try:
        assert agent.run("true").returncode == 0  # warm up: everything a session needs is imported
        idle = agent.rss()
        for _ in range(2):  # the second flood must fit in the memory the first one gave back
            peak = _flood_while_serving(agent, sockets)
            assert peak - idle < 10 * MIB, f"RSS grew by {(peak - idle) / MIB:.1f} MiB during the flood"
            for s in sockets:
                s.close()
            sockets.clear()
        assert agent.rss() - idle < 10 * MIB
    finally:
        agent.stop()


def _flood_while_serving(agent: AgentProcess, sockets: list[socket.socket]) -> int:
    """FLOOD connections each declaring a 4 MiB HELLO, and a real `shoal run` meanwhile; peak RSS."""
    head = HEAD.pack(5 + DEFAULT_MAX_FRAME_SIZE, MessageType.HELLO, 0)
    for _ in range(FLOOD):
        sock = _connect(agent.port)
        sockets.append(sock)
        sock.setblocking(False)
        try:
            sock.send(head + bytes(BODY_SENT))  # what the kernel takes; never blocks
        except OSError:
            pass  # already refused and closed
    peers = {"%s:%d" % s.getsockname()[:2] for s in sockets}
    served = subprocess.Popen(  # the real CLI, while the flood's sockets are all still open
        [*SHOAL, "run", f"127.0.0.1:{agent.port}", "--key-file", str(agent.key_path),
         "--", "echo", "served"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = agent.rss()

    def settled() -> bool:
        nonlocal peak
        peak = max(peak, agent.rss())
        return served.poll() is not None and _peers_accounted(agent.audit, peers) == peers

    with contextlib.suppress(AssertionError):  # what is missing is asserted below
        wait_for(settled, timeout=DEADLINE, what="the served command and every flood connection")
    out, err = served.communicate(timeout=DEADLINE)
    assert (served.returncode, out) == (0, "served\n"), err
    assert _peers_accounted(agent.audit, peers) == peers, "the agent never dealt with some flood connections"
    return peak


def test_a_refused_pre_auth_frame_gets_frame_too_large_naming_the_limit(tmp_path: Path) -> None:
    with AgentThread(keys=[SharedKey.generate()]) as agents:
        peer = RawController(agents.addresses[0])
        try:
            peer.send_raw(HEAD.pack(5 + 4097, MessageType.HELLO, 0))
            assert peer.wait_closed()
        finally:
            peer.close()
    (_, error), = untagged_frames(peer.received)
    assert error.code == "frame_too_large"  # type: ignore[attr-defined]
    assert "4097 bytes exceeds the limit of 4096" in error.message  # type: ignore[attr-defined]


# -- point 3: out of file descriptors -------------------------------------------------

def test_running_out_of_descriptors_logs_a_few_lines_and_the_agent_recovers(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    # Startup caps lifted so the held connections really exhaust the 64 descriptors.
    agent = AgentProcess(tmp_path, "--handshake-timeout", "60", "--max-startups", "1000",
                         "--max-startups-per-source", "1000", nofile=(64, 64))
    try:
        for _ in range(120):
            sockets.append(_connect(agent.port))
        # The episode's closing line, or (the old bug) asyncio's tracebacks.
        wait_for(lambda: re.search("accepting connections again|Traceback", agent.text()), timeout=DEADLINE)
        flooded = agent.text()
        for s in sockets:
            s.close()
        sockets.clear()
        result = agent.run("echo", "alive")
    finally:
        agent.stop()
    lines = flooded.splitlines()
    assert "Traceback" not in flooded
    assert len(lines) <= 8, flooded[:2000]
    assert any("cannot accept connections" in line for line in lines)
    assert any("cannot fit max_connections = 512" in line for line in lines)  # the start-up warning
    assert (result.returncode, result.stdout) == (0, "alive\n"), result.stderr


def test_the_agent_raises_its_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 4096 if hard == resource.RLIM_INFINITY else hard
    agent = AgentProcess(tmp_path, nofile=(64, hard))
    try:
        soft = agent.ps.rlimit(psutil.RLIMIT_NOFILE)[0]
    finally:
        agent.stop()
    assert soft == hard
    assert ("cannot fit max_connections" in agent.text()) == (hard < 512 + 64)


# -- point 4: startup caps ------------------------------------------------------------

def _hold(address: str, sources: list[str], per_source: int, sockets: list[socket.socket]) -> None:
    port = int(address.rpartition(":")[2])
    for source in sources:
        for _ in range(per_source):
            sockets.append(_connect(port, source))


def _run(agents: AgentThread, key: Path) -> int:
    return shoal_main(["run", "-n", agents.targets_spec(), "--key-file", str(key), "--", "true"])


def test_a_flood_from_one_source_cannot_take_the_startup_slots(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    key_path = tmp_path / "k.key"
    key = write_key_file(key_path)
    limits = {"limits.max_connections": 24, "limits.max_startups": 8, "limits.max_startups_per_source": 4,
              "limits.handshake_timeout": 60.0, "audit_log": str(tmp_path / "audit.jsonl")}
    with AgentThread(keys=[key], **limits) as agents:
        _hold(agents.addresses[0], ["127.0.0.2"], 30, sockets)
        wait_for(lambda: len(audit_events(tmp_path / "audit.jsonl", event="shed")) >= 26, timeout=DEADLINE)
        assert _run(agents, key_path) == 0  # from 127.0.0.1: at once
        held = agents.call(lambda: len(agents.agents[0].admission.startups))
    assert held == 4
    refused = [s for s in sockets if s.recv(4096)]  # the 26 turned away were told why, then closed
    assert len(refused) == 26


def test_a_flood_from_many_sources_sheds_its_oldest_for_a_controller(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    key_path = tmp_path / "k.key"
    key = write_key_file(key_path)
    limits = {"limits.max_connections": 24, "limits.max_startups": 8, "limits.max_startups_per_source": 4,
              "limits.handshake_timeout": 60.0}
    with AgentThread(keys=[key], **limits) as agents:
        _hold(agents.addresses[0], [f"127.0.0.{n}" for n in range(2, 10)], 3, sockets)  # 24 idle sockets
        # Held sockets are shed once they have had a second to authenticate: retry till then.
        assert wait_for(lambda: _run(agents, key_path) == 0, timeout=DEADLINE, interval=0.2)
        held = agents.call(lambda: len(agents.agents[0].admission.startups))
    assert held <= 8


# -- point 10: no key-id oracle, seen from outside -----------------------------------

def test_unknown_key_id_and_wrong_key_get_the_same_answer_and_only_the_audit_tells(tmp_path: Path) -> None:
    key = SharedKey.generate()
    audit = tmp_path / "audit.jsonl"
    with AgentThread(keys=[key], audit_log=str(audit)) as agents:
        answers = []
        for attempt in (SharedKey.generate(), _same_id_other_secret(key)):
            peer = RawController(agents.addresses[0], key=attempt)
            try:
                peer.conn.start()
                peer.flush()
                error = peer.rejected()
            finally:
                peer.close()
            kinds = [t for t, _ in untagged_frames(peer.received)]
            answers.append((kinds, error.code, error.message))
    assert answers[0] == answers[1] == ([MessageType.HELLO, MessageType.ERROR], "auth_failed",
                                        "authentication failed")
    reasons = [e["reason"] for e in audit_events(audit, event="auth_failed")]
    assert reasons == ["unknown key id", "bad proof (wrong key)"]


def _same_id_other_secret(key: SharedKey) -> SharedKey:
    """A key whose id matches `key`'s but whose secret does not (what an attacker sends)."""
    forged = _ForgedId(SharedKey.generate().secret)
    object.__setattr__(forged, "forced_id", key.key_id)
    return forged


class _ForgedId(SharedKey):
    forced_id = ""

    @property
    def key_id(self) -> str:
        return self.forced_id
