"""Message bodies: a round trip per type, and bad bodies give typed errors."""

from __future__ import annotations

import json

import pytest

from shoal.protocol.errors import LocalProtocolError, RemoteProtocolError
from shoal.protocol.codec import decode_body, encode_body
from shoal.protocol.messageclass import message_fields
from shoal.protocol.messages import (
    CONNECTION_LEVEL,
    MESSAGE_CLASSES,
    Cancel,
    Error,
    Exec,
    Exit,
    Hello,
    ListTree,
    Ping,
    Pong,
    BatchDone,
    PutBatch,
    Removed,
    RemovePaths,
    Signal,
    Started,
    Stdout,
    TreeEntries,
    Window,
    JobAttach,
    JobKill,
    JobKilled,
    JobStarted,
    JobsList,
    JobsReply,
    MAX_PING_LINKS,
    LinkPongs,
    PingLinks,
)

SAMPLES = [
    Hello(0, role="agent", software="shoal-agent/1", auth="hmac-sha256", key_id="ab", nonce="00" * 32, max_frame=65536),
    Exec(3, argv=["ls", "-l"], env={"A": "b"}, cwd="/tmp", timeout=2.5, stdin=True, window=1024),
    Exec(4, shell="echo hi | wc -c", detach=True, kill_grace=1.0),
    Stdout(3, b"\x00\xffbinary\n"),
    Exit(3, status=137, code=None, signal=9, duration=0.25, stdout_bytes=10),
    Error(3, code="not_found", message="nope: command not found", status=127),
    Signal(3, signal=2),
    Cancel(3, grace=0.5),
    Window(3, bytes=4096),
    Started(3, pid=1234, stdin_window=65536),
    Ping(0, t0=1.5),
    Pong(0, t0=1.5, t1=2.0, t2=2.1, version="x"),
    ListTree(5, path="/srv/www", sha256=True),
    TreeEntries(5, entries=[{"path": "a/b", "type": "file", "size": 3, "mtime": 1.5, "mode": 420,
                             "sha256": "00" * 32, "target": None}], done=True),
    RemovePaths(6, tree="/srv/www", paths=["old", "a/stale"]),
    RemovePaths(6, tree="/srv/www", paths=["old"], user="app", requires=["user"]),
    ListTree(5, path="/srv/www", user="app", requires=["user"]),
    Removed(6, count=2),
    PutBatch(8, tree="/srv/www", files=[{"path": "/srv/www/css", "dir": True, "mode": 493},
                                        {"path": "/srv/www/css/a.css", "size": 3, "sha256": "ab" * 32,
                                         "mode": 420, "mtime": 1.5, "owner": [33, 33]}], user="app",
             requires=["user"]),
    BatchDone(8, written=1, bytes=3, errors=[{"index": 0, "code": "bad_path", "message": "/srv/www/css: x"}]),
    JobStarted(4, job="0a1b2c3d", pid=99),
    JobsList(5),
    JobsReply(5, jobs=[{"job": "0a1b2c3d", "argv": ["sleep", "1"], "state": "running", "status": None}]),
    JobAttach(6, job="0a1b2c3d", window=65536),
    JobKill(7, job="0a1b2c3d", signal=9),
    JobKilled(7, job="0a1b2c3d", processes=3),
    PingLinks(9, links=[1, 2, 5], t0=1.5),
    LinkPongs(9, links=[1, 5], t1=[2.0, 2.5], t2=[2.1, 2.6], lost=[2], reasons=["the agent's connection ended"], done=True),
]


def test_tree_entries_must_be_objects() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(TreeEntries.TYPE, 5, b'{"entries": ["a"]}')


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    assert decode_body(msg.TYPE, msg.request_id, encode_body(msg)) == msg  # type: ignore[attr-defined]


def test_every_type_has_a_distinct_code() -> None:
    assert len({cls.TYPE for cls in MESSAGE_CLASSES.values()}) == len(MESSAGE_CLASSES)


@pytest.mark.parametrize("type_", sorted(MESSAGE_CLASSES), ids=lambda t: MESSAGE_CLASSES[t].__name__)
def test_any_object_decodes_to_a_message_or_a_bad_message(type_: int) -> None:
    """Every field of every type has a check of what JSON may hold there, so a body of
    any members is the message or bad_message, never another error."""
    cls = MESSAGE_CLASSES[type_]
    request_id = 0 if cls.TYPE in CONNECTION_LEVEL else 3
    odd = {name: [{"x": None}] for name in message_fields(cls) if name != "request_id"}
    for body in (b"{}", json.dumps(odd).encode()):
        try:
            decode_body(type_, request_id, body)
        except RemoteProtocolError as exc:
            assert exc.code == "bad_message"


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1,2]", b'{"argv": "ls"}', b'{"argv": ["ls"], "shell": "ls"}',
                                  b'{"argv": [1]}', b'{"shell": "x", "timeout": -1}', b'{"shell": "x", "stdin": 1}'])
def test_bad_exec_bodies_are_remote_protocol_errors(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(Exec.TYPE, 1, body)


@pytest.mark.parametrize("body, taken", [
    (b'{"status": 3}', 3),
    (b' \n{"status": 3}\r\t', 3),                       # whitespace around the object: the full decoder
    (b'{"status": 3, "status": 4}', None),                 # a duplicate member, on the scanner's path
    (b'{"status": 3, "x": {"a": 1, "a": 1}}', None),       # ... and inside an unknown member
    (b'{"status": NaN}', None),
    (b'{"status": 3, "timed_out": Infinity}', None),
    (b'{"status": 3}{}', None),                             # data after the object
    (b'{"status": 3} x', None),
    (b'{"status": }', None),                                # no value: the scanner's StopIteration
])
def test_a_body_is_exactly_one_strict_json_object(body: bytes, taken: int | None) -> None:
    """The body decoder takes what json.loads would with duplicates, NaN and trailing data refused,
    whichever of its two paths (scanner alone, or the full decoder) a body goes down."""
    if taken is not None:
        assert decode_body(Exit.TYPE, 1, body) == Exit(1, status=taken)
        return
    with pytest.raises(RemoteProtocolError) as err:
        decode_body(Exit.TYPE, 1, body)
    assert err.value.code == "bad_message"


def test_unknown_type_is_a_typed_error() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_body(0x7F, 1, b"")
    assert err.value.code == "unknown_type"


def test_connection_level_message_with_request_id_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(Ping.TYPE, 5, encode_body(Ping(0, t0=1.0)))


def test_invalid_messages_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        Exec(1)
    with pytest.raises(LocalProtocolError):
        Window(1, bytes=0)
    with pytest.raises(LocalProtocolError):
        Signal(1, signal=99)


def test_link_pongs_lists_that_do_not_pair_up_are_a_bad_message() -> None:
    """Each answered link has its two times and each lost one its reason, or the part means nothing."""
    for body in (b'{"links": [1, 2], "t1": [2.0], "t2": [2.1, 2.2]}', b'{"lost": [3], "reasons": []}'):
        with pytest.raises(RemoteProtocolError) as err:
            decode_body(LinkPongs.TYPE, 9, body)
        assert err.value.code == "bad_message"


@pytest.mark.parametrize("type_, body", [
    (Ping.TYPE, b'{"t0": 1e400}'),                   # infinity: no PONG could carry it back
    (Pong.TYPE, b'{"t0": 1.0, "t1": -1e400, "t2": 2.0}'),
    (PingLinks.TYPE, b'{"links": [1], "t0": 1e999}'),
    (Exit.TYPE, b'{"status": 4294967296}'),         # an exit status is 0..255
    (Exit.TYPE, b'{"status": -1}'),
    (Ping.TYPE, b'{"t0": 1' + b"0" * 400 + b'}'),    # an integer no float can hold is no time either
    (LinkPongs.TYPE, b'{"links": [1], "t1": [1e400], "t2": [2.0]}'),
])
def test_values_past_their_range_are_a_bad_message(type_: int, body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_body(type_, 0 if type_ in (Ping.TYPE, Pong.TYPE) else 3, body)
    assert len(str(err.value)) < 200  # the one line names the field, not 400 digits
    assert err.value.code == "bad_message"


def test_a_ping_links_names_at_most_max_ping_links() -> None:
    assert PingLinks(3, links=list(range(1, MAX_PING_LINKS + 1)), t0=1.0).links[-1] == MAX_PING_LINKS
    with pytest.raises(LocalProtocolError):
        PingLinks(3, links=list(range(1, MAX_PING_LINKS + 2)), t0=1.0)
    for bad in ([0], [2 ** 32]):  # a link id is a request id
        with pytest.raises(LocalProtocolError):
            PingLinks(3, links=bad, t0=1.0)


def test_unknown_json_fields_are_ignored_for_forward_compatibility() -> None:
    msg = decode_body(Exec.TYPE, 2, b'{"shell": "true", "future_option": [1, 2]}')
    assert msg == Exec(2, shell="true")
