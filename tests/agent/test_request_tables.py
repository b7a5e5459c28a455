"""The agent refuses a request's frames out of their table's order.

A controller on a plain socket (tests.rawpeer) sends a real agent frames that break
PROTOCOL.md's request tables (put, mkdir, get, batch, metrics, list, remove, jobs,
kill): each is refused
with the table's code (`out_of_order`, or `window_exceeded` for data past a window),
the agent closes the connection, and nothing reaches the disk. Frames that must be
judged before the agent answers go in one write with their request, so the agent
reads them together, before its answer can go out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.hostio.atomic import TEMP_MARK
from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import (Error, Exec, Exit, FileData, FileDone, FileEnd, FileInfo, GetFile, JobKill,
                                     JobsList, JobsReply, ListTree, Message, MetricsReply, MetricsRequest, PutBatch,
                                     PutFile, RemovePaths, Signal, Started, Stdin, StdinEof, Stdout, TreeEntries,
                                     Window)
from tests.agents import AgentThread
from tests.rawpeer import RawController
from tests.waiting import wait_for

RID = 5


@pytest.fixture
def agent(start_agents: Callable[..., AgentThread]) -> Iterator[AgentThread]:
    yield start_agents()
    RawController.close_all()


def peer_of(agent: AgentThread) -> RawController:
    peer = RawController(agent.addresses[0])
    peer.handshake()
    return peer


def send(peer: RawController, *msgs: Message) -> None:
    """Send `msgs` in one write."""
    for msg in msgs:
        peer.conn.send(msg)
    peer.flush()


def next_for(peer: RawController, rid: int = RID) -> Message:
    while True:
        event = peer.next_event()
        assert event is not None, "the agent closed the connection"
        if isinstance(event, Message) and event.request_id == rid:
            return event


def refused(peer: RawController, code: str, what: str) -> None:
    error = peer.rejected()
    assert (error.code, error.request_id) == (code, 0), error
    assert what in error.message, error.message


def opened_put(peer: RawController, path: Path, size: int) -> FileInfo:
    send(peer, PutFile(RID, path=str(path), size=size))
    info = next_for(peer)
    assert isinstance(info, FileInfo), info
    return info


def no_leftovers(directory: Path) -> bool:
    """Wait for the aborted put's temp file to go (the agent drops it off its loop)."""
    wait_for(lambda: not any(TEMP_MARK in p.name for p in directory.iterdir()), what="the temp file to go")
    return True


# -- put ------------------------------------------------------------------------


def test_file_end_before_file_info_is_out_of_order(agent: AgentThread, tmp_path: Path) -> None:
    peer = peer_of(agent)
    send(peer, PutFile(RID, path=str(tmp_path / "f"), size=0), FileEnd(RID, sha256=hashlib.sha256().hexdigest()))
    refused(peer, ErrorCode.OUT_OF_ORDER, "FILE_END from the controller is not legal for request 5 in state starting")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("late", [FileData(RID, b"x"), FileEnd(RID, sha256="0" * 64)],
                         ids=["file_data", "second_file_end"])
def test_anything_after_file_end_is_out_of_order(agent: AgentThread, tmp_path: Path, late: Message) -> None:
    """What the agent was once lenient about: FILE_DATA after FILE_END (then `window_exceeded`)."""
    (tmp_path / "f").write_bytes(b"old")
    peer = peer_of(agent)
    opened_put(peer, tmp_path / "f", 3)
    send(peer, FileData(RID, b"new"), FileEnd(RID, sha256=hashlib.sha256(b"new").hexdigest()), late)
    refused(peer, ErrorCode.OUT_OF_ORDER, f"{late.TYPE.name} from the controller is not legal for request 5 "
                                          "in state finishing")
    assert (tmp_path / "f").read_bytes() == b"old" and no_leftovers(tmp_path)


@pytest.mark.parametrize("stray", [Window(RID, bytes=10), Signal(RID, signal=15)], ids=["window", "signal"])
def test_a_window_or_a_signal_under_a_put_is_out_of_order(agent: AgentThread, tmp_path: Path, stray: Message) -> None:
    peer = peer_of(agent)
    opened_put(peer, tmp_path / "f", 3)
    send(peer, stray)
    refused(peer, ErrorCode.OUT_OF_ORDER, f"{stray.TYPE.name} from the controller is not legal for request 5")
    assert not (tmp_path / "f").exists() and no_leftovers(tmp_path)


def test_data_for_a_mkdir_put_is_past_its_window_of_zero(agent: AgentThread, tmp_path: Path) -> None:
    peer = peer_of(agent)
    send(peer, PutFile(RID, path=str(tmp_path / "d"), mkdir=True), FileData(RID, b"x"))
    refused(peer, ErrorCode.WINDOW_EXCEEDED, "file data for request 5 overran its window")


def test_a_well_ordered_put_still_lands(agent: AgentThread, tmp_path: Path) -> None:
    peer = peer_of(agent)
    info = opened_put(peer, tmp_path / "f", 3)
    assert info.window > 0
    send(peer, FileData(RID, b"new"), FileEnd(RID, sha256=hashlib.sha256(b"new").hexdigest()))
    done = next_for(peer)
    assert isinstance(done, FileDone) and (tmp_path / "f").read_bytes() == b"new"


# -- get ------------------------------------------------------------------------


def test_file_end_or_file_data_under_a_get_is_out_of_order(agent: AgentThread, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    for stray in (FileEnd(RID, sha256="0" * 64), FileData(RID, b"x")):
        peer = peer_of(agent)
        send(peer, GetFile(RID, path=str(tmp_path / "f"), window=1))  # one byte, then it waits for a WINDOW
        assert isinstance(next_for(peer), FileInfo)
        assert next_for(peer) == FileData(RID, b"0")
        send(peer, stray)
        refused(peer, ErrorCode.OUT_OF_ORDER, f"{stray.TYPE.name} from the controller is not legal for request 5 "
                                              "in state running")


def test_a_window_before_file_info_is_out_of_order(agent: AgentThread, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    peer = peer_of(agent)
    send(peer, GetFile(RID, path=str(tmp_path / "f"), window=1), Window(RID, bytes=9))
    refused(peer, ErrorCode.OUT_OF_ORDER, "WINDOW from the controller is not legal for request 5 in state starting")


# -- batch ----------------------------------------------------------------------


def _batch(tree: Path, content: bytes) -> PutBatch:
    entry = {"path": str(tree / "f"), "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    return PutBatch(RID, tree=str(tree), files=[entry])


@pytest.mark.parametrize("stray, code, what", [
    (FileEnd(RID, sha256="0" * 64), ErrorCode.OUT_OF_ORDER, "FILE_END from the controller is not legal for request 5"),
    (Window(RID, bytes=10), ErrorCode.OUT_OF_ORDER, "WINDOW from the controller is not legal for request 5"),
    (FileData(RID, b"fghijk"), ErrorCode.WINDOW_EXCEEDED, "file data for request 5 overran its window"),
], ids=["file_end", "window", "past_its_size"])
def test_a_batch_takes_only_its_size_in_file_data(agent: AgentThread, tmp_path: Path, stray: Message, code: str,
                                                  what: str) -> None:
    peer = peer_of(agent)
    send(peer, _batch(tmp_path, b"abcdefghij"), FileData(RID, b"abcde"))  # half its data: it waits for the rest
    send(peer, stray)
    refused(peer, code, what)
    assert not (tmp_path / "f").exists() and no_leftovers(tmp_path)


# -- metrics --------------------------------------------------------------------


def test_metrics_is_answered_once_and_then_forgotten(agent: AgentThread) -> None:
    peer = peer_of(agent)
    send(peer, MetricsRequest(RID))
    assert isinstance(next_for(peer), MetricsReply)
    send(peer, Signal(RID, signal=15))  # the request is done: its id is free again, and unknown
    error = next_for(peer)
    assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_REQUEST


def test_a_metrics_request_under_an_id_in_use_is_refused_and_the_put_carries_on(agent: AgentThread,
                                                                               tmp_path: Path) -> None:
    peer = peer_of(agent)
    opened_put(peer, tmp_path / "f", 3)
    send(peer, MetricsRequest(RID))
    error = next_for(peer)
    assert isinstance(error, Error) and error.code == ErrorCode.DUPLICATE_REQUEST
    send(peer, FileData(RID, b"new"), FileEnd(RID, sha256=hashlib.sha256(b"new").hexdigest()))
    assert isinstance(next_for(peer), FileDone) and (tmp_path / "f").read_bytes() == b"new"


# -- tree requests --------------------------------------------------------------
# The agent lists and removes on a thread, after it has read every frame of the
# write that brought the request: a stray frame in that write meets the request open.

_STRAYS = [Window(RID, bytes=10), Stdin(RID, b"x"), Signal(RID, signal=15), FileData(RID, b"x"),
           FileEnd(RID, sha256="0" * 64)]
_STRAY_IDS = ["window", "stdin", "signal", "file_data", "file_end"]


@pytest.mark.parametrize("stray", _STRAYS, ids=_STRAY_IDS)
def test_anything_but_an_error_under_a_listing_is_out_of_order(agent: AgentThread, tmp_path: Path,
                                                                stray: Message) -> None:
    """What the agent once answered `unknown_request` (or dropped, or took as a grant)."""
    (tmp_path / "a").write_bytes(b"a")
    peer = peer_of(agent)
    send(peer, ListTree(RID, path=str(tmp_path)), stray)
    refused(peer, ErrorCode.OUT_OF_ORDER, f"{stray.TYPE.name} from the controller is not legal for request 5 "
                                          "in state starting")


def test_a_removal_refused_mid_way_removes_nothing(agent: AgentThread, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    peer = peer_of(agent)
    send(peer, RemovePaths(RID, tree=str(tmp_path), paths=["a"]), Window(RID, bytes=10))
    refused(peer, ErrorCode.OUT_OF_ORDER, "WINDOW from the controller is not legal for request 5 in state starting")
    assert peer.wait_closed()
    assert (tmp_path / "a").read_bytes() == b"a"


def test_a_listing_ends_on_the_part_that_says_done_and_is_then_forgotten(agent: AgentThread,
                                                                        tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    peer = peer_of(agent)
    send(peer, ListTree(RID, path=str(tmp_path)))
    parts = [next_for(peer)]
    while isinstance(parts[-1], TreeEntries) and not parts[-1].done:
        parts.append(next_for(peer))
    assert all(isinstance(part, TreeEntries) for part in parts), parts
    assert [e["path"] for part in parts for e in part.entries] == ["a"]  # type: ignore[attr-defined]
    send(peer, Signal(RID, signal=15))
    error = next_for(peer)
    assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_REQUEST


# -- job requests ---------------------------------------------------------------


@pytest.mark.parametrize("opening", [JobsList(RID), JobKill(RID, job="j1")], ids=["jobs_list", "job_kill"])
def test_a_job_request_under_a_running_commands_id_is_refused_and_the_command_carries_on(
        agent: AgentThread, opening: Message) -> None:
    """Once answered under the command's id (JOBS_REPLY, or `unknown_job`), as if the id were free."""
    peer = peer_of(agent)
    send(peer, Exec(RID, argv=["cat"], stdin=True))
    started = next_for(peer)
    assert isinstance(started, Started)
    send(peer, opening)
    error = next_for(peer)
    assert isinstance(error, Error) and error.code == ErrorCode.DUPLICATE_REQUEST, error
    send(peer, Stdin(RID, b"still here"), StdinEof(RID))
    frames = [next_for(peer)]
    while not isinstance(frames[-1], Exit):
        frames.append(next_for(peer))
    assert b"".join(f.data for f in frames if isinstance(f, Stdout)) == b"still here"
    assert frames[-1].status == 0


def test_a_jobs_list_is_answered_once_and_then_forgotten(agent: AgentThread) -> None:
    peer = peer_of(agent)
    send(peer, JobsList(RID))
    assert isinstance(next_for(peer), JobsReply)
    send(peer, Signal(RID, signal=15))
    error = next_for(peer)
    assert isinstance(error, Error) and error.code == ErrorCode.UNKNOWN_REQUEST
