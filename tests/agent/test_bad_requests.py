"""Malformed requests from an authenticated peer: each gets a typed error, never `internal`.

A raw controller (tests.rawpeer) holds a long-running `cat` open on request 1 and
sends broken EXEC, PUT_FILE and GET_FILE bodies next to it. A field no process or
file can be made of is `bad_request` for that request alone, and the `cat` still
echoes afterwards; a body that is not the JSON its type needs is `bad_message` and
closes the connection; nothing any peer sends may produce `internal`.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shoal.protocol.errors import CONNECTION_SCOPE, ERROR_CODES, REQUEST_SCOPE
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import (
    Error,
    Exec,
    Exit,
    FileData,
    FileDone,
    FileEnd,
    FileInfo,
    JobStarted,
    Message,
    MessageType,
    Stderr,
    Stdin,
    Stdout,
    Window,
)
from tests.agents import AgentThread
from tests.rawpeer import RawController
from tests.waiting import wait_for

HOLDER = 1  # the request that must survive its neighbours' errors
FUZZ_SEED = 20261203
FUZZ_CASES = 300


@pytest.fixture(autouse=True)
def _close_raw_sockets() -> Iterator[None]:
    yield
    RawController.close_all()


@pytest.fixture(scope="module")
def key() -> SharedKey:
    return SharedKey.generate()


@pytest.fixture(scope="module")
def agent_settings(key: SharedKey) -> dict[str, object]:
    return {"keys": [key]}


@pytest.fixture(scope="module")
def zombie() -> Iterator[int]:
    """A pid whose /proc/PID/cwd is a link that cannot be read: realpath raises FileNotFoundError,
    just as when a put races someone swapping a symlink away."""
    proc = subprocess.Popen(["true"])
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, timeout=30, what="the child to exit")
    yield proc.pid
    proc.wait()


class Session:
    """An authenticated raw controller with a `cat` held open as request HOLDER."""

    def __init__(self, agent: AgentThread, key: SharedKey) -> None:
        self.peer = RawController(agent.addresses[0], key)
        self.peer.handshake()
        self.echoed = b""
        self.closing_error: Error | None = None
        self.events: list[Message] = []
        self.send(Exec(HOLDER, argv=["cat"], stdin=True))
        self.until(HOLDER, lambda m: m.TYPE is MessageType.STARTED)

    def send(self, msg: Message) -> None:
        self.peer.conn.send(msg)
        self.peer.flush()

    def send_body(self, type_: MessageType, rid: int, body: bytes) -> None:
        """Any body at all under a valid frame and MAC."""
        self.peer.conn.send_data(type_, rid, body)
        self.peer.flush()

    def next(self) -> Message | None:
        """The next message; None once the agent closed the connection."""
        event = self.peer.next_event()
        if event is None:
            return None
        assert isinstance(event, Message), event
        if isinstance(event, Error):
            assert event.code != "internal", f"agent answered internal: {event.message}"
            if event.request_id == 0:
                self.closing_error = event
        if isinstance(event, Stdout) and event.request_id == HOLDER:
            self.echoed += event.data
        if isinstance(event, (Stdout, Stderr, FileData)) and event.data:
            self.send(Window(event.request_id, bytes=len(event.data)))  # whatever window it asked for
        self.events.append(event)
        return event

    def until(self, rid: int, done: Any) -> Message | None:
        """Read until a message for `rid` satisfies `done`, an ERROR for it comes, or the end."""
        while (msg := self.next()) is not None:
            if msg.request_id == rid and (isinstance(msg, Error) or done(msg)):
                return msg
            if msg.request_id == 0 and isinstance(msg, Error):
                return msg
        return None

    def answer(self, rid: int) -> Error:
        """The ERROR this request ends with (the test expects one)."""
        msg = self.until(rid, lambda m: False)
        assert isinstance(msg, Error), f"no ERROR for request {rid}; got {self.events[-3:]}"
        return msg

    def holder_alive(self, token: bytes) -> bool:
        self.send(Stdin(HOLDER, token))
        while token not in self.echoed:
            if self.next() is None:
                return False
        return True


@pytest.fixture
def session(agents: AgentThread, key: SharedKey) -> Session:
    return Session(agents, key)


def _exec_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# -- EXEC fields: bad_request, that request only --------------------------------------


@pytest.mark.parametrize(("fields", "named"), [
    ({"argv": ["echo", "a\x00b"]}, "argv[1]"),
    ({"argv": ["ec\x00ho"]}, "argv[0]"),
    ({"shell": "echo \x00"}, "shell"),
    ({"argv": ["true"], "env": {"A=B": "x"}}, "env key 'A=B'"),
    ({"argv": ["true"], "env": {"": "x"}}, "env key ''"),
    ({"argv": ["true"], "env": {"A\x00": "x"}}, "env key 'A\\x00'"),
    ({"argv": ["true"], "env": {"A": "x\x00y"}}, "env['A']"),
    ({"argv": ["true"], "cwd": "/tmp\x00"}, "cwd"),
    ({"argv": ["echo", "\ud800"]}, "argv[1]"),
    ({"argv": ["true"], "kill_grace": -1}, "kill_grace"),
], ids=["argv-nul", "argv0-nul", "shell-nul", "env-key-equals", "env-key-empty", "env-key-nul",
        "env-value-nul", "cwd-nul", "lone-surrogate", "negative-grace"])
def test_bad_exec_field_is_bad_request_and_neighbours_live(session: Session, fields: dict[str, Any],
                                                           named: str) -> None:
    session.send_body(MessageType.EXEC, 2, _exec_body(**fields))
    err = session.answer(2)
    assert err.code == "bad_request" and named in err.message, err
    assert "\n" not in err.message
    assert session.holder_alive(b"still here\n")


def test_non_utf8_argv_bytes_still_pass_through(session: Session) -> None:
    # json carries a non-UTF-8 argv byte as a lone low surrogate (surrogateescape): allowed.
    session.send(Exec(2, argv=["printf", "%s", "\udcff"]))
    session.until(2, lambda m: isinstance(m, Exit))
    out = b"".join(m.data for m in session.events if isinstance(m, Stdout) and m.request_id == 2)
    assert out == b"\xff"


# -- bodies that are not the JSON the type needs: bad_message, connection closed ------


@pytest.mark.parametrize("body", [
    b'{"argv":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"argv":["true"],"argv":["false"]}',
    b'{"argv":["true"],"kill_grace":NaN}',
    b'{"argv":["true"],"timeout":Infinity}',
    b'{"argv":' + b"[" * 33 + b"]" * 33 + b"}",
], ids=["deep-100000", "duplicate-member", "nan", "infinity", "depth-33"])
def test_bad_json_is_bad_message(session: Session, body: bytes) -> None:
    session.send_body(MessageType.EXEC, 2, body)
    err = session.answer(2)
    assert (err.request_id, err.code) == (0, "bad_message"), err
    assert session.next() is None  # the agent closed


def test_nesting_up_to_the_limit_is_only_a_type_question(session: Session) -> None:
    body = b'{"argv":["true"],"x":' + b"[" * 31 + b"]" * 31 + b"}"  # unknown member, depth 32
    session.send_body(MessageType.EXEC, 2, body)
    assert isinstance(session.until(2, lambda m: isinstance(m, Exit)), Exit)


def test_request_id_zero_is_bad_message(session: Session) -> None:
    session.send_body(MessageType.EXEC, 0, _exec_body(argv=["true"]))
    err = session.answer(0)
    assert err.code == "bad_message" and "request id" in err.message


def test_frame_in_the_wrong_direction_is_wrong_direction(session: Session) -> None:
    session.send_body(MessageType.STDOUT, HOLDER, b"not yours to send")
    err = session.answer(0)
    assert err.code == "wrong_direction" and "STDOUT" in err.message


# -- transfers ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["put", "get"])
def test_path_that_vanishes_while_resolved_is_not_found(session: Session, zombie: int, kind: str) -> None:
    path = f"/proc/{zombie}/cwd/f"
    if kind == "put":
        session.send_body(MessageType.PUT_FILE, 2, json.dumps({"path": path, "size": 0}).encode())
    else:
        session.send_body(MessageType.GET_FILE, 2, json.dumps({"path": path}).encode())
    err = session.answer(2)
    assert err.code == "not_found", err
    assert session.holder_alive(b"after the vanished path\n")


@pytest.mark.parametrize(("fields", "named"), [
    ({"mode": 0o70000}, "mode"),
    ({"owner": [0, 2 ** 40]}, "owner[1]"),
    ({"owner": [0]}, "owner"),
    ({"mtime": 1e300}, "mtime"),
    ({"size": -1}, "size"),
], ids=["mode", "owner-id", "owner-shape", "mtime", "size"])
def test_bad_put_field_is_bad_request(session: Session, tmp_path: Path, fields: dict[str, Any],
                                      named: str) -> None:
    body = {"path": str(tmp_path / "f"), "size": 0, **fields}
    session.send_body(MessageType.PUT_FILE, 2, json.dumps(body).encode())
    err = session.answer(2)
    assert err.code == "bad_request" and named in err.message, err
    assert not (tmp_path / "f").exists()
    assert session.holder_alive(b"ok\n")


# -- fuzz: nothing an authenticated peer sends yields internal -----------------------


def _nasty_text(rng: random.Random, base: str) -> str:
    return rng.choice(["", "\x00", "a\x00b", "=", "A=B", "\ud800", "\udcff", base + "\x00", base * 3,
                       "x" * 5000, "é", " ", base])


def _nasty_value(rng: random.Random, base: str) -> Any:
    return rng.choice([
        -1, 0, 1, 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, -1e308, 1e308, 1e-9, True, False, None,
        [], {}, [0, 0], [0, 2 ** 40], ["a"], {"A": 1}, _nasty_text(rng, base),
    ])


def _nasty_number(rng: random.Random) -> Any:
    return rng.choice([-1, 0, 1, 4096, 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, -1e308, 1e308, 1e-9, None])


def _typed(rng: random.Random, kind: str) -> Any:
    """Mostly a value of the field's own type (so the field rules are what is tested)."""
    if rng.random() < 0.15:
        return _nasty_value(rng, "x")
    if kind == "number":
        return _nasty_number(rng)
    return rng.choice([True, False]) if kind == "bool" else None


def _mutated_fields(rng: random.Random, base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(list(fields))
        make = fields[name]
        body[name] = _typed(rng, make) if isinstance(make, str) else make(rng)
    return body


def _exec_case(rng: random.Random, tmp: Path, zombie: int) -> tuple[MessageType, dict[str, Any]]:
    safe_word = ["true", "echo", "/nonexistent/cmd", "", "\x00", "tr\x00ue", "\ud800"]
    fields: dict[str, Any] = {
        "argv": lambda r: [r.choice(safe_word)] + [_nasty_text(r, "a") for _ in range(r.randint(0, 3))],
        "shell": lambda r: r.choice(["true", "", " ", "echo \x00", "\ud800", None]),
        "env": lambda r: {_nasty_text(r, "K"): _nasty_text(r, "v") for _ in range(r.randint(0, 3))},
        "cwd": lambda r: r.choice([str(tmp), "", "\x00", "relative", f"/proc/{zombie}/cwd", "\ud800",
                                   str(tmp) + "\x00", None]),
        "timeout": "number", "stdin": "bool", "window": "number", "detach": "bool", "kill_grace": "number",
        "unknown_member": "any",
    }
    return MessageType.EXEC, _mutated_fields(rng, {"argv": ["true"], "timeout": 10}, fields)


def _put_case(rng: random.Random, tmp: Path, zombie: int) -> tuple[MessageType, dict[str, Any]]:
    paths = [str(tmp / "f"), str(tmp / "d"), str(tmp / "missing" / "f"), "relative", "", str(tmp) + "/\x00",
             str(tmp / "\ud800"), f"/proc/{zombie}/cwd/f", str(tmp / "sub" / "..")]
    fields: dict[str, Any] = {
        "path": lambda r: r.choice(paths), "name": lambda r: _nasty_text(r, "n"),
        "size": "number", "mode": "number", "mtime": "number", "into_dir": "bool", "mkdir": "bool",
        "owner": lambda r: r.choice([None, [0, 0], [0, 2 ** 40], [-1, 0], [0], [1, 2, 3], "x"]),
        "window": "number",
    }
    base = {"path": str(tmp / "f"), "size": 0, "mode": 0o644, "mtime": 1.0}
    return MessageType.PUT_FILE, _mutated_fields(rng, base, fields)


def _get_case(rng: random.Random, tmp: Path, zombie: int) -> tuple[MessageType, dict[str, Any]]:
    paths = [str(tmp / "readable"), str(tmp), "relative", "", str(tmp) + "/\x00", str(tmp / "\ud800"),
             f"/proc/{zombie}/cwd/f", str(tmp / "missing")]
    fields: dict[str, Any] = {"path": lambda r: r.choice(paths), "window": "number"}
    return MessageType.GET_FILE, _mutated_fields(rng, {"path": str(tmp / "readable")}, fields)


def _encode(rng: random.Random, body: dict[str, Any]) -> bytes:
    """JSON text of `body`, sometimes broken at the byte level too."""
    data = json.dumps(body).encode()
    how = rng.random()
    if how < 0.75:
        return data
    if how < 0.80:
        return data[:-1] + b',"' + rng.choice(list(body)).encode() + b'":1}'  # duplicate member
    if how < 0.85:
        depth = rng.choice([30, 33, 5000])
        return data[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if how < 0.90:
        return data[:-1] + b',"timeout":' + rng.choice([b"NaN", b"Infinity", b"-Infinity"]) + b"}"
    if how < 0.95:
        at = rng.randrange(len(data))
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    return data[:rng.randrange(len(data))]


def _finish(session: Session, type_: MessageType, rid: int) -> Message | None:
    """Drive one request to its end; returns its last message (None: connection closed)."""
    msg = session.until(rid, lambda m: isinstance(m, (Exit, JobStarted, FileInfo, FileDone)))  # detached: a job
    if isinstance(msg, FileInfo) and type_ is MessageType.PUT_FILE:
        session.send(FileData(rid, b"x"))  # one byte whatever the size: checksum or size mismatch at worst
        session.send(FileEnd(rid, sha256=hashlib.sha256(b"x").hexdigest()))
        msg = session.until(rid, lambda m: isinstance(m, FileDone))
    elif isinstance(msg, FileInfo):
        msg = session.until(rid, lambda m: isinstance(m, FileEnd))
    return msg


@pytest.mark.slow
def test_fuzzed_requests_never_yield_internal(agents: AgentThread, key: SharedKey, tmp_path: Path,
                                              zombie: int) -> None:
    rng = random.Random(FUZZ_SEED)
    (tmp_path / "d").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "readable").write_bytes(b"some bytes\n")
    makers = [_exec_case, _put_case, _get_case]
    session = Session(agents, key)
    outcomes: dict[str, int] = {}
    for case in range(FUZZ_CASES):
        rid = 2 + case
        type_, body = rng.choice(makers)(rng, tmp_path, zombie)
        session.send_body(type_, rid, _encode(rng, body))
        last = _finish(session, type_, rid)
        if last is None or last.request_id == 0:
            err = session.closing_error
            assert err is not None and ERROR_CODES[err.code][0] == CONNECTION_SCOPE, (case, body, err)
            outcomes[err.code] = outcomes.get(err.code, 0) + 1
            session = Session(agents, key)
            continue
        if isinstance(last, Error):
            assert ERROR_CODES[last.code][0] == REQUEST_SCOPE, (case, body, last)
        outcome = last.code if isinstance(last, Error) else type(last).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert session.holder_alive(f"case {case}\n".encode()), (case, body)
    # The mix reached both kinds of refusal and some requests that ran.
    assert outcomes.get("bad_request") and outcomes.get("bad_message") and outcomes.get("Exit"), outcomes
