"""The hub: agents that dial in, named; local clients reaching them with no handshake of their own.

Real sockets on loopback, real agents in-process, the library's client as any
user of it would hold it (`ConnectOptions(hub=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.controller.client import ping_all
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.hub.client import HubAccess, HubConnection, HubNotRunning
from shoal.controller.remote import Command
from shoal.controller.result import Result
from shoal.controller.targets import Target
from shoal.hostio.backoff import Backoff
from shoal.hostio.atomic import TEMP_MARK
from shoal.protocol.errors import ShoalConnectionError
from shoal.protocol.connection import Connection, Role
from shoal.protocol.frames import frame_head
from shoal.protocol.link import HUB_FEATURE, PING_LINKS_FEATURE, inner_message, link_message
from shoal.protocol.messages import (Error, FileData, Linked, LinkOpen, LinkPongs, ListTree, MessageType, MetricsRequest,
                                     Ping, PingLinks, Pong, PutFile, Stdin)
from tests.waiting import wait_for_async
from tests.hubs import HubThread, close_all, dial_in, new_key, running_hub
from tests.rawpeer import RawController


class Collect:
    """A fleet handler keeping every host's output and result."""

    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {}

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        self.out.setdefault(host, bytearray()).extend(data)

    def on_result(self, result: Result) -> None:
        pass


def named(name: str) -> Target:
    """A target the hub knows by name (where it is, is the hub's business)."""
    return Target(name=name, host=name, port=1)


async def test_dialled_in_agents_run_commands_by_name(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, ["web1", "web2"], key)
        try:
            assert all(not a.addresses for a in agents)  # dialling out, they listen nowhere
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                seen = Collect()
                result = await Fleet([named("web1"), named("web2")], options).run(
                    Command(shell='echo "$SHOAL_HOST says hi"; exit 3'), seen)
            by_host = {r.host: r for r in result.results}
            assert {h: r.status for h, r in by_host.items()} == {"web1": 3, "web2": 3}
            assert {h: bytes(o) for h, o in seen.out.items()} == {"web1": b"web1 says hi\n", "web2": b"web2 says hi\n"}
            assert hub.registry.get("WEB1") is not None  # names compare ignoring case
        finally:
            await close_all(agents)


async def test_output_stdin_ping_and_metrics_pass_through_a_link(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, ["db1"], key)
        try:
            hub_conn = await HubConnection.connect(str(tmp_path / "hub.sock"))
            try:
                client = await hub_conn.link(named("db1"))
                proc = await client.exec(Command(shell="cat; echo done >&2", stdin=True))
                await proc.write(b"x" * 3_000_000)
                proc.close_stdin()
                out = bytearray()
                err = bytearray()
                async for event in proc:
                    (out if event.stream == "stdout" else err).extend(event.data)
                assert (await proc.wait()).status == 0
                assert bytes(out) == b"x" * 3_000_000 and bytes(err) == b"done\n"
                pong, t0, t3 = await client.ping()
                assert pong.version.startswith("shoal-agent/") and t0 <= t3
                assert "cpu" in await client.metrics()
                hosts = await hub_conn.hosts()
                assert [(h["name"], h["kind"]) for h in hosts] == [("db1", "dialin")]
                assert 0 < await hub_conn.ping() < 60  # the hub itself answers, no agent asked
            finally:
                await hub_conn.close()
        finally:
            await close_all(agents)


@contextlib.asynccontextmanager
async def hub_connection(tmp_path: Path, names: list[str]) -> AsyncIterator[HubConnection]:
    """A hub with agents `names` dialled in, and a local client's connection to it."""
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, names, key)
        try:
            hub_conn = await HubConnection.connect(str(tmp_path / "hub.sock"))
            try:
                yield hub_conn
            finally:
                await hub_conn.close()
        finally:
            await close_all(agents)


async def test_a_ping_round_answers_every_link_and_names_the_one_that_is_gone(tmp_path: Path) -> None:
    async with hub_connection(tmp_path, ["p1", "p2", "p3"]) as hub_conn:
        links = [await hub_conn.link(named(n)) for n in ("p1", "p2", "p3")]
        second = await hub_conn.link(named("p1"))  # two links to one agent, pinged in one round
        await links[2].close()
        results = await ping_all([*links, second])
        assert isinstance(results[2], ShoalConnectionError) and "closed by controller" in str(results[2])
        for result in (results[0], results[1], results[3]):
            assert not isinstance(result, ShoalConnectionError)
            pong, t0, t3 = result
            assert pong.t0 == t0 <= t3 and pong.version.startswith("shoal-agent/")
        assert results[0][1] == results[3][1]  # type: ignore[index]  # one PING_LINKS, one t0
        # A t0 the caller gives is the round's: two links to one agent, both answered with it.
        answers: list[object] = []
        for link in (links[0], second):
            assert link.send_ping(answers.append, 1e300) == 1e300
        await wait_for_async(lambda: len(answers) == 2)
        assert [a.t0 for a in answers] == [1e300, 1e300]  # type: ignore[attr-defined]


def test_ping_links_answers_each_open_link_with_its_agents_times_and_names_the_rest(tmp_path: Path) -> None:
    """PING_LINKS on the wire (PROTOCOL.md section 7): one frame for many links, LINK_PONGS in parts."""
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["p1", "p2"], key) as hub:
        client = _raw_hub_client(hub)
        try:
            for link_id, name in ((1, "p1"), (2, "p2")):
                client.conn.send(LinkOpen(link_id, host=name))
            before = time.time()
            client.conn.send(PingLinks(3, links=[1, 2, 9], t0=12.5))
            client.flush()
            parts = _pong_parts(client, 3)
            answered = {link: (t1, t2) for p in parts for link, t1, t2 in zip(p.links, p.t1, p.t2)}
            assert sorted(answered) == [1, 2]
            assert all(before - 5 <= t1 <= t2 <= time.time() + 5 for t1, t2 in answered.values())  # the agents' clocks
            assert [(link, reason) for p in parts for link, reason in zip(p.lost, p.reasons)] == [(9, "no open link 9")]
            assert client.conn.state.value == "open"
        finally:
            client.close()


def _raw_hub_client(hub: HubThread, max_frame: int | None = None) -> RawController:
    client = RawController(str(hub.socket))
    if max_frame is not None:
        client.conn = Connection(Role.CONTROLLER, max_frame_size=max_frame)
    assert PING_LINKS_FEATURE in client.handshake().peer.features
    return client


def _pong_parts(client: RawController, request_id: int) -> list[LinkPongs]:
    parts: list[LinkPongs] = []
    while not (parts and parts[-1].done):
        event = client.next_event()
        assert event is not None, "the hub closed the connection"
        if isinstance(event, LinkPongs):
            assert event.request_id == request_id and not any(p.done for p in parts)
            parts.append(event)
    return parts


def test_a_link_named_twice_is_answered_twice_and_a_request_id_in_use_is_refused(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["p1"], key) as hub:
        client = _raw_hub_client(hub)
        try:
            client.conn.send(LinkOpen(1, host="p1"))
            client.conn.send(PingLinks(3, links=[1, 1, 1], t0=12.5))
            client.conn.send(PingLinks(1, links=[1], t0=12.5))  # 1 names the link
            client.flush()
            refused = None
            parts: list[LinkPongs] = []
            while not (parts and parts[-1].done and refused is not None):
                event = client.next_event()
                assert event is not None, "the hub closed the connection"
                if isinstance(event, Error):
                    refused = event
                elif isinstance(event, LinkPongs):
                    parts.append(event)
            assert [link for p in parts for link in p.links] == [1, 1, 1]
            assert (refused.request_id, refused.code) == (1, "duplicate_request")
        finally:
            client.close()


def test_link_pongs_parts_fit_the_clients_frame_limit(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["p1"], key) as hub:
        client = _raw_hub_client(hub, max_frame=4096)
        try:
            client.conn.send(PingLinks(3, links=list(range(100, 600)), t0=12.5))
            client.flush()
            parts = _pong_parts(client, 3)  # a part past 4096 bytes would fail our connection
            assert len(parts) > 1
            assert sorted(link for p in parts for link in p.lost) == list(range(100, 600))
        finally:
            client.close()


def test_a_ping_links_with_a_time_json_cannot_carry_back_is_a_bad_message(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["p1"], key) as hub:
        client = _raw_hub_client(hub)
        try:
            body = b'{"links": [1], "t0": 1e400}'  # decodes to infinity
            client.send_raw(frame_head(MessageType.PING_LINKS, 3, len(body), False) + body)
            assert client.rejected().code == "bad_message"
        finally:
            client.close()
        assert hub.call(lambda: [a.name for a in hub.hub.registry.agents()]) == ["p1"]  # the agent is untouched


def test_the_hub_answers_its_own_ping_with_its_clock(tmp_path: Path) -> None:
    """A PING at request id 0 asks the hub itself: its PONG's t1 and t2 are the hub's times, not the client's t0."""
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, [], key) as hub:
        client = _raw_hub_client(hub)
        try:
            before = time.time()
            client.conn.send(Ping(0, t0=12.5))
            client.flush()
            pong = client.next_event()
            assert isinstance(pong, Pong) and pong.t0 == 12.5 and pong.version.startswith("shoal-hub/")
            assert before <= pong.t1 <= pong.t2 <= time.time()  # the same machine's clock
        finally:
            client.close()


def test_a_ping_inside_a_link_is_answered_with_the_agents_pong_and_its_own_t0(tmp_path: Path) -> None:
    """The LINKED PING every hub takes (and a client uses when the hub lacks PING_LINKS)."""
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["p1"], key) as hub:
        client = _raw_hub_client(hub)
        try:
            for link_id in (1, 2):  # two links to one agent, the same t0 in flight on both
                client.conn.send(LinkOpen(link_id, host="p1"))
                client.conn.send(link_message(link_id, Ping(0, t0=12.5)))
            client.flush()
            pongs: dict[int, Pong] = {}
            while len(pongs) < 2:
                event = client.next_event()
                assert event is not None, "the hub closed the connection"
                if isinstance(event, Linked):
                    inner = inner_message(event, Role.AGENT)
                    if isinstance(inner, Pong):
                        pongs[event.request_id] = inner
            assert {link: p.t0 for link, p in pongs.items()} == {1: 12.5, 2: 12.5}
            assert all(p.version.startswith("shoal-agent/") and p.t1 > 1e9 for p in pongs.values())
        finally:
            client.close()


async def test_a_client_pings_inside_the_links_of_a_hub_without_ping_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.controller.hub import local

    monkeypatch.setattr(local, "PING_LINKS_FEATURE", HUB_FEATURE)  # the HELLO of a hub from before PING_LINKS
    async with hub_connection(tmp_path, ["p1", "p2"]) as hub_conn:
        links = [await hub_conn.link(named(n)) for n in ("p1", "p2")]
        results = await ping_all(links)
        assert all(not isinstance(r, ShoalConnectionError) and r[0].version.startswith("shoal-agent/")
                   for r in results)
        # No PING_LINKS went out: it would have taken the next request id on the connection.
        assert (await hub_conn.link(named("p1"))).link_id == links[-1].link_id + 1


async def test_a_link_closed_with_its_ping_in_flight_answers_it_with_its_own_name(tmp_path: Path) -> None:
    async with hub_connection(tmp_path, ["p1"]) as hub_conn:
        link = await hub_conn.link(named("p1"))
        answers: list[object] = []
        link.send_ping(answers.append)
        await asyncio.sleep(0)  # one turn: the round's PING_LINKS is queued behind it, the link's close after it
        await link.close()
        assert len(answers) == 1 and isinstance(answers[0], ShoalConnectionError)
        assert str(answers[0]) == "p1: closed by controller"
        again = await hub_conn.link(named("p1"))
        assert not isinstance((await ping_all([again]))[0], ShoalConnectionError)
        assert len(answers) == 1  # the hub's answer for the closed link, come before this round's, was dropped


# A request the client opens, a frame its table refuses there, and the code it is refused with.
BROKEN_TABLES = {
    "metrics": (lambda dest: MetricsRequest(7), Stdin(7, data=b"x"), "out_of_order"),  # one reply, nothing more
    "listing": (lambda dest: ListTree(7, path=dest), FileData(7, data=b"x"), "out_of_order"),
    "put": (lambda dest: PutFile(7, path=dest, size=1), FileData(7, data=b"xy"), "window_exceeded"),
}


@pytest.mark.parametrize("case", BROKEN_TABLES)
async def test_a_client_breaking_a_requests_table_loses_its_own_connection_not_the_agents(
        tmp_path: Path, case: str) -> None:
    start, stray, code = BROKEN_TABLES[case]
    dest = tmp_path / "dest"
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, ["db1"], key)
        try:
            agent_side = hub.registry.get("db1")
            assert agent_side is not None
            bad = await HubConnection.connect(str(tmp_path / "hub.sock"))
            link = await bad.link(named("db1"))
            link.send(start(str(dest)))
            link.send(stray)
            await wait_for_async(lambda: bad.closed, what="the hub to close the client that broke the table")
            assert f"hub error {code}" in (bad.close_reason or "")
            good = await HubConnection.connect(str(tmp_path / "hub.sock"))
            try:
                proc = await (await good.link(named("db1"))).exec(Command(shell="echo still here"))
                assert b"".join([event.data async for event in proc]) == b"still here\n"
            finally:
                await good.close()
            assert hub.registry.get("db1") is agent_side and not agent_side.client.closed
            await wait_for_async(lambda: not any(TEMP_MARK in n for n in os.listdir(tmp_path)),
                                 what="the abandoned put's temp file to go")
            assert not dest.exists()
        finally:
            await close_all(agents)


async def test_unknown_name_is_one_hosts_unreachable_result(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub.sock", None) as hub:
        async with ConnectOptions(hub=HubAccess(str(hub.settings.socket))) as options:
            result = await Fleet([named("nosuch")], options).run(Command(shell="true"), Collect())
    (only,) = result.results
    assert only.outcome == "unreachable" and "no agent of this name" in (only.error or "")


async def test_hub_not_running_is_one_error_not_one_per_host(tmp_path: Path) -> None:
    with pytest.raises(HubNotRunning, match="not running"):
        async with ConnectOptions(hub=HubAccess(str(tmp_path / "none.sock"))):
            pass


async def test_second_agent_claiming_a_name_is_refused_audited_and_gets_it_once_the_first_is_gone(
        tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        (first,) = await dial_in(hub, ["web1"], key)
        holder = hub.registry.get("web1")
        second = await _start_dialer(hub, "web1", key)
        try:
            await wait_for_async(lambda: audit.exists() and b'"name_in_use"' in audit.read_bytes(), timeout=15)
            assert hub.registry.get("web1") is holder  # the first keeps it
            record = next(json.loads(line) for line in audit.read_text().splitlines() if "name_in_use" in line)
            assert record["name"] == "web1" and record["key_id"] == key.key_id
            await first.close()
            await wait_for_async(lambda: (h := hub.registry.get("web1")) is not None and h is not holder, timeout=15)
        finally:
            await close_all([first, second])  # type: ignore[list-item]


async def _start_dialer(hub: object, name: str, key: object) -> object:
    from tests.hubs import dialers

    (agent,) = dialers(hub, [name], key)  # type: ignore[arg-type]
    await agent.start()
    return agent


async def test_a_wrong_key_never_reaches_the_registry(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    other, _ = new_key(tmp_path / "..")
    audit = tmp_path / "audit.log"
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        intruder = await _start_dialer(hub, "web1", other)
        try:
            await wait_for_async(lambda: audit.exists() and b'"auth_failed"' in audit.read_bytes(), timeout=15)
            assert hub.registry.get("web1") is None
        finally:
            await intruder.close()  # type: ignore[attr-defined]


def test_backoff_waits_grow_to_the_cap_and_restart_after_a_success() -> None:
    top = Backoff(2.0, 30.0, rng=lambda: 0.999999)
    ceilings = [round(top.next_delay(), 3) for _ in range(7)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]  # never over the cap
    bottom = Backoff(2.0, 30.0, rng=lambda: 0.0)
    assert [bottom.next_delay() for _ in range(3)] == [0.0, 0.0, 0.0]  # jitter reaches down to 0
    top.reset()
    assert round(top.next_delay(), 3) == 2.0


async def test_agents_come_back_after_a_hub_restart_and_no_command_runs_twice(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    ran = tmp_path / "ran"
    sock = tmp_path / "hub.sock"
    async with running_hub(sock, key) as hub:
        address = hub.dialins.addresses[0]
        agents = await dial_in(hub, ["a1", "a2", "a3"], key)
        async with ConnectOptions(hub=HubAccess(str(sock))) as options:
            result = await Fleet([named("a1")], options).run(Command(shell=f"echo once >> {ran}"), Collect())
        assert result.results[0].status == 0
    try:
        host, port = address.rsplit(":", 1)
        async with running_hub(sock, key, listen=((host, int(port)),)) as again:
            # within the backoff bound (reconnect_max, 0.5 s here) of the hub being back
            await wait_for_async(lambda: all(again.registry.get(n) for n in ("a1", "a2", "a3")), timeout=15)
            assert ran.read_text() == "once\n"
    finally:
        await close_all(agents)


def test_the_local_socket_refuses_another_uid(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    from tests.hubs import HubThread

    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="shoal-hub-"))  # pytest's own tmp is root's alone
    open_dir.chmod(0o755)
    with HubThread(open_dir, []) as t:
        sock = str(t.socket)
        os.chmod(sock, 0o666)  # past the file mode: SO_PEERCRED must still refuse
        answer = _as_nobody(sock)
    open_dir.rmdir()
    assert b"auth_failed" in answer and b"may not use this hub" in answer


def _as_nobody(path: str) -> bytes:
    """What the hub says to a client of uid 65534 (a forked child connects as that user)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(path)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            os.write(write, data)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read a listening socket's backlog")
async def test_the_dial_in_port_queues_thousands_in_the_kernel_while_taking_a_few_per_turn(tmp_path: Path) -> None:
    """asyncio accepts as many connections per wakeup as the backlog it was given; the hub
    gives it a small one and sets the kernel's queue back to LISTEN_BACKLOG, which ss shows."""
    from shoal.controller.hub import dialin

    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        port = hub.dialins.addresses[0].rpartition(":")[2]
        listing = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True)
        backlogs = {int(line.split()[2]) for line in listing.stdout.splitlines()}
        assert backlogs == {dialin.LISTEN_BACKLOG}  # not the ACCEPTS_PER_TURN asyncio was given


async def test_a_burst_beyond_the_handshake_slots_waits_its_turn_instead_of_being_sent_away(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.controller.hub import dialin

    monkeypatch.setattr(dialin, "MAX_PENDING", 2)
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    names = [f"node{i}" for i in range(12)]
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        # a long first backoff: an agent sent away would not be back within the test
        agents = await dial_in(hub, names, key, **{"limits.reconnect_min": 60.0, "limits.reconnect_max": 60.0})
        try:
            events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
            assert events.count("agent_connected") == len(names)
            assert not hub.dialins.pending and not hub.dialins.queued
        finally:
            await close_all(agents)
