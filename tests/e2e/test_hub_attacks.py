"""The hub under attack: hostile dial-in agents, hostile scrapers, and a socket someone else serves.

Each test is an attack that worked before its fix (issue 20's security review),
made on loopback with real sockets: an agent that holds the key but lies in what
it says, a local user of another uid, an HTTP client that never finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.protocol.connection import Connection, HandshakeComplete, KeyLookup, Role
from shoal.protocol.errors import ShoalConnectionError
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import MetricsReply, MetricsRequest
from shoal.controller.cli.hubrun import run_through_hub
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.hub.client import HubAccess, HubConnection
from shoal.controller.hub.metricshttp import MAX_SCRAPERS
from shoal.controller.hub.server import Hub
from shoal.controller.remote import Command
from shoal.controller.targets import Target
from tests.agents import shoal
from tests.programs import SHOAL
from tests.e2e.test_hub import Collect, named
from tests.rawpeer import audit_events
from tests.hubs import close_all, dial_in, dialin_address, new_key, running_hub
from tests.waiting import wait_for, wait_for_async


class HostileDialIn:
    """An agent holding the hub's key that dials in with a HELLO of its own making and
    answers every METRICS_REQUEST with `metrics`."""

    def __init__(self, hub: Hub, key: SharedKey, name: str, software: str = "shoal-agent/hostile",
                 metrics: dict[str, Any] | None = None, max_frame: int | None = None, hold: bool = False) -> None:
        self.hub = hub
        self.asked = 0  # METRICS_REQUESTs received
        self._held: list[int] | None = [] if hold else None  # with `hold`: answered only at release()
        self.conn = Connection(Role.AGENT, keys=KeyLookup([key]), software=software, name=name)
        if max_frame is not None:  # what its HELLO announces (and, once authenticated, all it reads)
            self.conn._max_frame_size = max_frame
        self.metrics = metrics or {}
        self.authenticated = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> HostileDialIn:
        host, _, port = self.hub.dialins.addresses[0].rpartition(":")
        reader, self._writer = await asyncio.open_connection(host, int(port))
        self._task = asyncio.create_task(self._serve(reader, self._writer))
        await asyncio.wait_for(self.authenticated.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._writer is not None
        self._writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not None:
                if isinstance(event, HandshakeComplete):
                    self.authenticated.set()
                elif isinstance(event, MetricsRequest):
                    self.asked += 1
                    if self._held is not None:
                        self._held.append(event.request_id)
                    else:
                        self.conn.send(MetricsReply(event.request_id, metrics=self.metrics))
            writer.write(b"".join(self.conn.data_to_send()))

    def release(self) -> None:
        """Answer the METRICS_REQUESTs held so far, and the later ones at once."""
        assert self._writer is not None and self._held is not None
        for request_id in self._held:
            self.conn.send(MetricsReply(request_id, metrics=self.metrics))
        self._held = None
        self._writer.write(b"".join(self.conn.data_to_send()))


async def _get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
    return await asyncio.get_running_loop().run_in_executor(None, fetch)


# One sample line of the text exposition format 0.0.4: name, labels whose values hold
# only the three escapes, a value Prometheus's float parser takes.
_SAMPLE = re.compile(r'[a-z_][a-z0-9_]*\{(?:[a-z_]+="(?:[^"\\\n]|\\[\\"n])*",?)*\} (?:-?\d{1,310}|-?\d+\.\d+(?:e[-+]\d+)?)')


async def test_one_agents_hostile_metrics_cannot_break_the_scrape_of_the_others(tmp_path: Path) -> None:
    """A lone surrogate in a label or an integer no float holds used to fail every
    scrape (503 for the whole fleet); now that agent's samples are cleaned and the
    other hosts are reported as before."""
    key, _ = new_key(tmp_path)
    hostile = {"agent_version": "1.0\ud800", "procs": 10 ** 400, "cpu": {"count": 4},
               "disks": [{"mount": '/a"}\nshoal_up{host="forged"} 1\n#', "total": 1}]}
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as hub:
        agents = await dial_in(hub, ["web1"], key)
        try:
            async with HostileDialIn(hub, key, "evil", metrics=hostile):
                await wait_for_async(lambda: hub.registry.get("evil") is not None)
                status, text = await _get(f"http://{hub.metrics_address}/metrics")
        finally:
            await close_all(agents)
    assert status == 200
    up = dict(re.findall(r'^shoal_up\{host="([^"]+)"\} (\d)$', text, re.M))
    assert up == {"evil": "1", "web1": "1"}
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(_SAMPLE.fullmatch(line) for line in samples), [s for s in samples if not _SAMPLE.fullmatch(s)]
    assert 'shoal_agent_info{host="evil",version="1.0?"} 1' in samples
    assert 'shoal_cpu_count{host="evil"} 4' in samples and not any("shoal_processes" in s and "evil" in s
                                                                    for s in samples)


_IMPOSTOR_HELLO = json.dumps({"protocol": 1, "role": "agent", "software": "shoal-hub/impostor", "auth": "none",
                              "key_id": "", "nonce": "", "max_frame": 4194304, "macs": [], "mac": "",
                              "features": ["hub"], "name": ""}).encode()


def _serve_as_impostor(path: Path, kept: Path) -> None:
    """A "hub" of another user: it answers HELLO as a hub would and keeps every byte a
    client sends it in `kept`."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    while True:
        client, _ = server.accept()
        client.settimeout(5)
        answered = False
        with contextlib.suppress(OSError), client:
            while data := client.recv(65536):
                with kept.open("ab") as out:
                    out.write(data)
                if not answered:
                    client.sendall(struct.pack(">IBI", 5 + len(_IMPOSTOR_HELLO), 1, 0) + _IMPOSTOR_HELLO)
                    answered = True


async def test_a_garbage_hello_is_one_audit_record_not_two(tmp_path: Path) -> None:
    """An unauthenticated peer whose HELLO broke the protocol used to be audited twice, the
    second time as an agent that "closed the connection before its HELLO (does it want
    TLS?)": a false lead for the admin, and twice the audit log per connection of a flood."""
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    hello = json.dumps({"protocol": 1, "role": "agent\nforged", "auth": "hmac-sha256"}).encode()
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        host, _, port = hub.dialins.addresses[0].rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        peer = "%s:%d" % writer.get_extra_info("sockname")[:2]
        writer.write(struct.pack(">IBI", 5 + len(hello), 1, 0) + hello)
        while await reader.read(65536):  # the hub's HELLO, its ERROR, then its hang-up
            pass
        writer.close()
        await wait_for_async(lambda: audit.exists() and peer in audit.read_text(), what="the audit record")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["event"], r["reason"]) for r in records if r.get("peer") == peer] == [
        ("protocol_error", "HELLO: bad role 'agent\\nforged'")]


async def test_an_agent_announcing_a_frame_limit_no_request_fits_is_refused(tmp_path: Path) -> None:
    """An agent holding the key used to be able to announce `max_frame` 1: every client
    run naming it then lost its whole hub connection, and every other host's results
    with it. The hub now refuses it as it would a bad name."""
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        for limit in (1, -1):
            async with HostileDialIn(hub, key, "tiny", max_frame=limit):
                await wait_for_async(lambda: audit_events(audit, event="refused"), what="the refusal")
            assert hub.registry.get("tiny") is None
            [refused] = audit_events(audit, event="refused")
            assert refused["reason"] == f"a frame limit (max_frame) of {limit} bytes; a hub needs at least 4096"
            audit.unlink()


async def test_a_request_too_large_for_one_agent_fails_alone(tmp_path: Path) -> None:
    """An EXEC larger than one agent's frame limit (64 KiB, the least an agent takes) used
    to fail the client's hub connection: every host of the run was lost. Now that host
    alone gets `bad_request` and nothing of it reaches its agent."""
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        agents = await dial_in(hub, ["web1"], key) + await dial_in(hub, ["small"], key,
                                                                    **{"limits.max_frame_size": 65536})
        try:
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                seen = Collect()
                big = Command(shell="echo ${#BIG}", env={"BIG": "x" * 70000})
                run = await Fleet([named("web1"), named("small")], options).run(big, seen)
        finally:
            await close_all(agents)
    results = {r.host: r for r in run.results}
    assert results["web1"].status == 0 and bytes(seen.out["web1"]) == b"70000\n"
    assert results["small"].error_code == "bad_request" and "exceeds small's frame limit of 65536" in str(
        results["small"].error)


def test_sockets_that_never_authenticate_cannot_take_the_hubs_descriptors(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Under the common open-files limit (`shoal hub` started by hand), a stranger's few
    hundred idle TCP connections used to take every descriptor: the hub could accept
    no local client. Now they hold at most a quarter of the limit (the rest refused at
    once), and a local client is served as usual."""
    sock = tmp_path / "hub.sock"
    limit = 256
    hub = subprocess.Popen(["sh", "-c", f"ulimit -n {limit} && exec {shlex.join(SHOAL)} hub --socket {sock} "
                            "--listen 127.0.0.1:0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    idle: list[socket.socket] = []
    try:
        host, _, port = dialin_address(hub).rpartition(":")
        for _ in range(limit + 44):
            idle.append(socket.create_connection((host, int(port)), timeout=30))
        wait_for(lambda: sum(map(_closed_by_peer, idle)) >= len(idle) - limit // 4,
                 what="the hub to refuse connections beyond its share of descriptors")
        status, out, err = shoal(capsysbinary, "hosts", "--hub", str(sock))
        assert (status, err) == (0, b"")
    finally:
        for conn in idle:
            conn.close()
        hub.kill()
        hub.wait()
        assert hub.stderr is not None
        hub.stderr.close()


def _handler_threads() -> int:
    """Threads of the hub's metrics endpoint serving one connection each."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def test_scrapers_that_never_finish_their_request_cannot_pile_up_threads_in_the_hub(tmp_path: Path) -> None:
    """Any local user reaches the metrics port. Each connection used to hold a thread for
    as long as it stayed open (hundreds of idle sockets, hundreds of threads); now at most
    MAX_SCRAPERS are served, the oldest unfinished request shed for a newcomer, and a
    real scrape still gets its answer."""
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as hub:
        agents = await dial_in(hub, ["web1"], key)
        host, _, port = (hub.metrics_address or "").rpartition(":")
        idle: list[socket.socket] = []
        try:
            for _ in range(3 * MAX_SCRAPERS):
                idle.append(socket.create_connection((host, int(port)), timeout=30))
                idle[-1].sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            await wait_for_async(lambda: sum(map(_closed_by_peer, idle)) >= len(idle) - MAX_SCRAPERS,
                                 what="the hub to shed idle scrapers beyond its limit")
            await wait_for_async(lambda: _handler_threads() <= MAX_SCRAPERS, what="shed scrapers' threads to end")
            status, text = await _get(f"http://{hub.metrics_address}/metrics")
        finally:
            for sock in idle:
                sock.close()
            await close_all(agents)
    assert status == 200 and 'shoal_up{host="web1"} 1' in text


async def test_a_scraper_that_goes_away_leaves_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A scraper that hung up before its answer used to print a traceback in the hub's log
    (any local user could fill it); now the broken connection is dropped quietly."""
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as hub:
        agents = await dial_in(hub, ["web1"], key)
        host, _, port = (hub.metrics_address or "").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=30) as rude:
                rude.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            await wait_for_async(lambda: _handler_threads() == 0, what="the scrape's thread to end")
        finally:
            await close_all(agents)
    assert "Traceback" not in capsys.readouterr().err


async def test_an_agents_words_cannot_forge_lines_or_fields_in_the_hubs_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An agent's `software` goes into the hub's one-line log record of its arrival; a
    newline in it used to start a line of the agent's choosing (the JSON audit file was
    always escaped)."""
    key, _ = new_key(tmp_path)
    forged = 'shoal-agent/1\nagent_connected name=root peer=10.0.0.1:1 version="x"'
    caplog.set_level(logging.INFO, logger="shoal.hub")
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(tmp_path / "audit.log")) as hub:
        async with HostileDialIn(hub, key, "evil", software=forged):
            await wait_for_async(lambda: hub.registry.get("evil") is not None)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("agent_connected")]
    assert "\n" not in line and line.endswith(" name=evil version=" + json.dumps(forged))
    [record] = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines() if "agent_connected" in x]
    assert record["version"] == forged


@pytest.fixture
def impostor() -> Iterator[tuple[str, Path]]:
    """(socket path, file of what it received) of a hub-like socket served by uid 65534
    (a forked child, as tests/e2e/test_hub.py's client of another uid)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to serve a socket as another uid")
    where = Path(tempfile.mkdtemp(prefix="shoal-impostor-"))  # pytest's own tmp is root's alone
    where.chmod(0o777)  # a shared directory, as /tmp is
    path, kept = where / "hub.sock", where / "received"
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.setgid(65534)
            os.setuid(65534)
            _serve_as_impostor(path, kept)
        finally:
            os._exit(0)
    try:
        wait_for(path.exists, what="the impostor's socket")
        yield str(path), kept
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(where)


async def test_a_client_sends_nothing_to_a_hub_socket_another_user_serves(impostor: tuple[str, Path]) -> None:
    """Whoever can bind the socket's path (a shared directory, a hub not running) used to
    get the client's commands, stdin and files; the client now checks SO_PEERCRED first."""
    path, kept = impostor
    with pytest.raises(ShoalConnectionError, match="served by uid 65534, not by this user"):
        await HubConnection.connect(path, timeout=10)
    assert not kept.exists()


def test_the_short_path_sends_nothing_to_a_hub_socket_another_user_serves(
        capsysbinary: pytest.CaptureFixture[bytes], impostor: tuple[str, Path]) -> None:
    path, kept = impostor
    argv = ["run", "--hub", path, "-n", "web1", "--", "echo", "s3cret"]
    assert run_through_hub(argv) is None
    status, out, err = shoal(capsysbinary, *argv)
    assert status == 255 and out == b""
    assert err.decode().strip().endswith(f"hub {path}: served by uid 65534, not by this user (uid 0): "
                                         "nothing was sent to it")
    assert not kept.exists()


async def test_an_inventory_target_announcing_a_frame_limit_no_request_fits_is_not_served(tmp_path: Path) -> None:
    """What a dial-in agent is refused for, an inventory target the hub dials is too: one
    announcing `max_frame` 1 is left unconnected with the reason, and a run naming it
    says so for that host alone."""
    key, _ = new_key(tmp_path)

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.AGENT, keys=KeyLookup([key]), software="shoal-agent/hostile")
        conn._max_frame_size = 1  # what its HELLO announces
        with contextlib.suppress(Exception):
            while data := await reader.read(1 << 16):
                conn.receive_data(data)
                while conn.next_event() is not None:
                    pass
                writer.write(b"".join(conn.data_to_send()))
        writer.close()

    server = await asyncio.start_server(hostile, "127.0.0.1", 0)
    tiny = Target(name="tiny", host="127.0.0.1", port=server.sockets[0].getsockname()[1])
    why = "refused: a frame limit (max_frame) of 1 bytes; a hub needs at least 4096"
    try:
        async with running_hub(tmp_path / "hub.sock", key, targets=(tiny,), connect=ConnectOptions(key=key)) as hub:
            await wait_for_async(lambda: why in hub.why_not_connected("tiny"), what="the refusal")
            agents = await dial_in(hub, ["web1"], key)
            try:
                async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                    run = await Fleet([named("web1"), named("tiny")], options).run(Command(shell="true"), Collect())
            finally:
                await close_all(agents)
    finally:
        server.close()
    results = {r.host: r for r in run.results}
    assert results["web1"].status == 0
    assert results["tiny"].outcome == "unreachable" and why in str(results["tiny"].error)
    assert hub.registry.get("tiny") is None


async def test_scrapes_that_come_while_a_round_is_out_share_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Any local user reaches the metrics port: scrapes arriving while one is being
    answered used to send every agent a METRICS_REQUEST each. They now wait for the
    round in flight and get its answer; the agent is asked once."""
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, metrics=("127.0.0.1", 0)) as hub:
        url = f"http://{hub.metrics_address}/metrics"
        async with HostileDialIn(hub, key, "web1", metrics={"load1": 1.5}, hold=True) as agent:
            first = asyncio.ensure_future(_get(url))
            await wait_for_async(lambda: agent.asked == 1, what="the first scrape's request")
            with caplog.at_level(logging.DEBUG, logger="shoal.hub"):
                others = [asyncio.ensure_future(_get(url)) for _ in range(3)]
                await wait_for_async(lambda: sum("waits for the round in flight" in r.getMessage()
                                                 for r in caplog.records) == 3, what="the other scrapes waiting")
            agent.release()
            answers = await asyncio.gather(first, *others)
            assert agent.asked == 1
            assert [status for status, _ in answers] == [200] * 4 and len({text for _, text in answers}) == 1
            assert 'shoal_up{host="web1"} 1' in answers[0][1]
            assert (await _get(url))[0] == 200 and agent.asked == 2  # a scrape after the round: a new round
