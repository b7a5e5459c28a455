"""The plain one-host `shoal run --hub` (controller/cli/hubrun.py): what the full program
does, without its imports.

Each case runs once through the short path and once through the full program
(`SHOAL_DEBUG_LOG` set sends a run the long way) against the same hub and agent,
and a user must not be able to tell them apart: stdout bytes, stderr, exit status.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.controller.cli import hubrun
from shoal.controller.cli.hubrun import plain_hub_run, run_through_hub
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.connection import Connection, HandshakeComplete, Role
from shoal.protocol.frames import DEFAULT_MAX_FRAME_SIZE
from shoal.protocol.link import HUB_FEATURE, inner_message, link_data
from shoal.protocol.messages import NODE_ENV, PROTOCOL_VERSION, Exec, Linked, LinkOpen, LinkOpened, MessageType
from tests.agents import shoal
from tests.hubs import HubThread, new_key

_T = MessageType


@pytest.fixture
def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["web1"], key) as t:
        yield t


class ScriptedHub:
    """A hub on a Unix socket that opens every link and answers each EXEC with one
    inner frame a test picks, legal or not (a real hub checks the agent's frames)."""

    def __init__(self, path: Path, answer: MessageType, body: bytes) -> None:
        self.path, self.answer, self.body = path, answer, body
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # ends the accept below
        self.listener.close()
        self.thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                try:
                    self._talk(sock)
                except OSError:
                    pass  # the client went away first

    def _talk(self, sock: socket.socket) -> None:
        conn = Connection(Role.AGENT, software="scripted-hub", features=[HUB_FEATURE])
        while data := sock.recv(1 << 16):
            conn.receive_data(data)
            while (event := conn.next_event()) is not None:
                if isinstance(event, LinkOpen):
                    conn.send(LinkOpened(event.request_id, host=event.host, software="shoal-agent/0", max_frame=65536))
                elif isinstance(event, Linked) and isinstance(inner := inner_message(event, Role.CONTROLLER), Exec):
                    conn.send(link_data(event.request_id, self.answer, inner.request_id, self.body))
            sock.sendall(b"".join(conn.data_to_send()))


@pytest.fixture
def scripted_hub(tmp_path: Path) -> Iterator[Callable[[MessageType, bytes], ScriptedHub]]:
    hubs: list[ScriptedHub] = []

    def start(answer: MessageType, body: bytes) -> ScriptedHub:
        hubs.append(ScriptedHub(tmp_path / f"hub{len(hubs)}.sock", answer, body))
        return hubs[-1]

    yield start
    for scripted in hubs:
        scripted.close()


def test_the_wire_constants_spelled_there_are_the_protocols() -> None:
    assert (hubrun._HELLO, hubrun._ERROR, hubrun._EXEC, hubrun._SIGNAL, hubrun._CANCEL, hubrun._WINDOW) == (
        _T.HELLO, _T.ERROR, _T.EXEC, _T.SIGNAL, _T.CANCEL, _T.WINDOW)
    assert (hubrun._STARTED, hubrun._STDOUT, hubrun._STDERR, hubrun._EXIT) == (_T.STARTED, _T.STDOUT, _T.STDERR, _T.EXIT)
    assert (hubrun._LINK_OPEN, hubrun._LINK_OPENED, hubrun._LINKED, hubrun._LINK_CLOSE) == (
        _T.LINK_OPEN, _T.LINK_OPENED, _T.LINKED, _T.LINK_CLOSE)
    assert (hubrun._PROTOCOL_VERSION, hubrun._MAX_FRAME, hubrun._OUTPUT_WINDOW) == (
        PROTOCOL_VERSION, DEFAULT_MAX_FRAME_SIZE, OUTPUT_WINDOW)


def test_the_opening_write_is_what_the_hubs_own_decoder_takes() -> None:
    hub_side = Connection(Role.AGENT)
    hub_side.receive_data(hubrun._opening("web1", "echo hi"))
    events = [hub_side.next_event() for _ in range(3)]
    assert isinstance(events[0], HandshakeComplete) and events[0].peer.auth == "none"
    assert events[1] == LinkOpen(1, host="web1")
    assert isinstance(events[2], Linked)
    assert inner_message(events[2], Role.CONTROLLER) == Exec(
        1, shell="echo hi", env=dict(zip(NODE_ENV, ("web1", "0", "1"))), window=OUTPUT_WINDOW)
    assert hub_side.next_event() is None


@pytest.mark.parametrize("argv, plain", [
    (["run", "-n", "--hub", "S", "web1", "--", "true"], ("S", "web1", ["true"], True)),
    (["run", "--hub=S", "web1", "-n", "echo", "a", "b"], ("S", "web1", ["echo", "a", "b"], True)),
    (["run", "--hub", "S", "web1", "--", "-x"], ("S", "web1", ["-x"], False)),
    (["run", "--hub", "S", "web[1-2]", "--", "true"], None),   # a node set
    (["run", "--hub", "S", "web1:8470", "true"], None),        # a port
    (["run", "--hub", "S", "@web", "true"], None),             # a group
    (["run", "--hub", "S", "-o", "json", "web1", "true"], None),  # any other option
    (["run", "web1", "--", "true"], None),                     # no hub
    (["run", "--hub", "S", "web1"], None),                     # no command
    (["ping", "--hub", "S", "web1"], None),
])
def test_only_the_plain_form_takes_the_short_path(argv: list[str], plain: object) -> None:
    assert plain_hub_run(argv) == plain


@pytest.mark.parametrize("command", [
    'echo "hi $SHOAL_HOST $SHOAL_NODENUM $SHOAL_NUMNODES"; echo oops >&2; exit 3',
    "head -c 9000000 /dev/zero",  # past the output window: granted back as it is written
    "kill -9 $$",
    "sleep 5 & echo left",          # the agent ends the leftover: one line says so
])
def test_a_user_sees_what_the_full_program_shows(capsysbinary, hub, monkeypatch, command: str) -> None:  # type: ignore[no-untyped-def]
    argv = ["run", "-n", "--hub", str(hub.socket), "web1", "--", command]
    short = run_through_hub(argv)
    out, err = capsysbinary.readouterr()
    assert short is not None  # it did take the short path
    monkeypatch.setenv("SHOAL_DEBUG_LOG", str(hub.socket.parent / "debug.log"))
    assert run_through_hub(argv) is None
    assert shoal(capsysbinary, *argv) == (short, out, err)


def test_what_the_hub_cannot_take_is_left_to_the_full_program(capsysbinary, hub) -> None:  # type: ignore[no-untyped-def]
    for argv in (["run", "-n", "--hub", str(hub.socket), "web9", "--", "true"],
                 ["run", "-n", "--hub", str(hub.socket.parent / "nothing.sock"), "web1", "--", "true"]):
        assert run_through_hub(argv) is None
    assert shoal(capsysbinary, "run", "-n", "--hub", str(hub.socket), "web9", "--", "true") == (
        255, b"", b"shoal: web9: unreachable: no agent of this name is connected to the hub\n")


def test_the_installed_command_runs_it_without_asyncio_or_argparse(hub) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "shoal.controller.cli.entry", "run", "-n",
                           "--hub", str(hub.socket), "web1", "--", "echo hi"], capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, b"hi\n")
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.decode().splitlines()}
    assert "shoal.controller.cli.hubrun" in imported
    assert not imported & {"asyncio", "argparse", "json", "shoal.protocol", "shoal.controller.cli.main"}


def test_a_reader_that_goes_away_ends_the_short_path_with_141_and_no_traceback(hub) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "shoal.controller.cli.entry", "run", "-n",
                             "--hub", str(hub.socket), "web1", "--", "yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(65536).startswith(b"y\ny\n")  # the command runs and its output flows
    proc.stdout.close()
    with proc.stderr:
        assert proc.wait(60) == 141
        err = proc.stderr.read().decode()
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert said == []  # as the full program: quiet
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "shoal.controller.cli.hubrun" in imported and "shoal.controller.cli.run" not in imported  # the short path ran


@pytest.mark.parametrize("answer, body", [
    (_T.EXIT, b'{"status": 300}'),            # no exit status
    (_T.EXIT, b'{"status": 1, "signal": "x"}'),
    (_T.ERROR, b'{"code": 5}'),
])
def test_a_hub_answering_with_a_frame_the_protocol_refuses_is_one_line_as_in_the_full_program(
        capsysbinary, monkeypatch, scripted_hub, answer: MessageType, body: bytes) -> None:  # type: ignore[no-untyped-def]
    hub = scripted_hub(answer, body)
    argv = ["run", "-n", "--hub", str(hub.path), "web1", "--", "true"]
    short = run_through_hub(argv)
    out, err = capsysbinary.readouterr()
    assert short == 255 and out == b"" and err.startswith(b"shoal: web1: ") and err.count(b"\n") == 1
    monkeypatch.setenv("SHOAL_DEBUG_LOG", str(hub.path.parent / "debug.log"))
    assert shoal(capsysbinary, *argv) == (short, out, err)


def test_a_bug_in_the_short_path_is_one_line_and_70_or_the_full_program(capsysbinary, hub, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The short path runs outside the full program's catch-all: a bug there must still be
    one line (once the command went out) or leave the run to the full program (before)."""
    argv = ["run", "-n", "--hub", str(hub.socket), "web1", "--", "echo ran"]

    def broken(*args: object) -> object:
        raise RuntimeError("something impossible")

    with monkeypatch.context() as patch:
        patch.setattr(hubrun, "_opening", broken)  # before anything is sent
        assert run_through_hub(argv) is None
        assert capsysbinary.readouterr() == (b"", b"")
    with monkeypatch.context() as patch:
        patch.setattr(hubrun._Run, "serve", broken)  # after the command went out
        assert run_through_hub(argv) == 70
        out, err = capsysbinary.readouterr()
    assert out == b"" and err.decode().splitlines() == [
        "shoal: internal error: RuntimeError: something impossible (a bug in shoal's one-host hub run; "
        "with SHOAL_DEBUG_LOG=FILE set the full program runs it)"]
    monkeypatch.setenv("SHOAL_DEBUG_LOG", str(hub.socket.parent / "debug.log"))
    assert shoal(capsysbinary, *argv) == (0, b"ran\n", b"")  # the way round it that the line names
