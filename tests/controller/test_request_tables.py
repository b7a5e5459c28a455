"""The controller refuses an agent that answers a request out of its table's order.

The agent is scripted (tests.scriptedagent): a real handshake on loopback, then
answers a real agent never sends. The controller library must report the host as
lost with the table's verdict (never a success, never a hang), tell the agent why
(an ERROR with the table's code) and hang up; nothing lands on the local disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.controller.client import AgentClient
from shoal.controller.jobs import JobsAnswer, format_jobs, job_outcome, kill_job, list_jobs
from shoal.controller.putbatch import BatchRequest
from shoal.controller.result import UNREACHABLE
from shoal.controller.get import GetRequest, get_file
from shoal.controller.put import put_file
from shoal.controller.transferplan import plan_put
from shoal.controller.tree import RemoveRequest, list_remote
from shoal.protocol.codec import decode_body
from shoal.protocol.errors import ErrorCode, ShoalConnectionError
from shoal.protocol.messages import (FileData, FileDone, FileEnd, FileInfo, GetFile, JobKill, JobKilled, JobsList,
                                     JobsReply, ListTree, Message, MetricsReply, MetricsRequest, PutBatch, PutFile,
                                     Removed, RemovePaths, TreeEntries)
from tests.scriptedagent import Script, ScriptedAgent
from tests.waiting import wait_for_async


async def _told(agent: ScriptedAgent, code: str) -> None:
    """The controller sent the agent an ERROR with `code` and hung up."""
    await wait_for_async(agent.hung_up.is_set, what="the controller to hang up")
    assert agent.errors() == [code]


def _answer(kind: type[Message], answers: Callable[[int], list[Message]]) -> Script:
    """Answer each message of type `kind` with `answers(its request id)`."""
    return lambda msg: answers(msg.request_id) if isinstance(msg, kind) else []


async def test_metrics_answered_with_file_info_is_out_of_order() -> None:
    async with ScriptedAgent(_answer(MetricsRequest, lambda rid: [FileInfo(rid, size=1)])) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await client.metrics()
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert "FILE_INFO from the agent is not legal for request 1 in state starting" in str(lost.value)


_PUT_ANSWERS = {
    # Without the table the controller would wait forever for a window to send in.
    "FILE_DONE from the agent is not legal for request 1 in state starting":
        lambda rid: [FileDone(rid, sha256="0" * 64, bytes=7, path="/x")],
    "FILE_END from the agent is not legal for request 1 in state running":
        lambda rid: [FileInfo(rid, size=7, window=64), FileEnd(rid, sha256="0" * 64)],
}


@pytest.mark.parametrize("verdict", list(_PUT_ANSWERS), ids=["done_before_data", "file_end"])
async def test_a_put_answered_out_of_order_fails_the_host(tmp_path: Path, verdict: str) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"content")
    async with ScriptedAgent(_answer(PutFile, _PUT_ANSWERS[verdict])) as agent:
        client = await AgentClient.connect(agent.target)
        result = await put_file(client, plan_put([str(src)], "/x", False), "/x")
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert result.status == UNREACHABLE and verdict in (result.error or "")


async def test_get_data_before_file_info_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    script = _answer(GetFile, lambda rid: [FileData(rid, b"data"), FileInfo(rid, size=4)])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        result = await get_file(client, "/remote", str(tmp_path / "local"))
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert result.status == UNREACHABLE
    assert "FILE_DATA from the agent is not legal for request 1 in state starting" in (result.error or "")
    assert os.listdir(tmp_path) == []


async def test_get_data_past_the_window_is_refused() -> None:
    script = _answer(GetFile, lambda rid: [FileInfo(rid, size=9), FileData(rid, b"12345"),
                                           FileEnd(rid, sha256="0" * 64)])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        request = GetRequest(client, "/remote", window=4)
        with pytest.raises(ShoalConnectionError) as lost:
            await request.next_chunks()
        await client.close()
        await _told(agent, ErrorCode.WINDOW_EXCEEDED)
    assert "output of request 1 overran its window" in str(lost.value)


async def test_a_batch_answered_with_file_done_is_refused(tmp_path: Path) -> None:
    content = b"small"
    entry = {"path": str(tmp_path / "f"), "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    script = _answer(PutBatch, lambda rid: [FileDone(rid, sha256="", bytes=0, path=str(tmp_path))])
    async with ScriptedAgent(script, features=("put_batch",)) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await BatchRequest(client, str(tmp_path), [entry], content).wait()
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert "FILE_DONE from the agent is not legal for request 1 in state running" in str(lost.value)


async def test_a_well_behaved_script_passes() -> None:
    """The scripted agent itself is no cause of refusal: a legal answer is taken."""
    script = _answer(MetricsRequest, lambda rid: [MetricsReply(rid, metrics={"load": [1.0]})])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        assert await client.metrics() == {"load": [1.0]}
        await client.close()
        await asyncio.wait_for(agent.hung_up.wait(), 15)
    assert agent.errors() == []


# -- tree requests --------------------------------------------------------------

_LIST_ANSWERS = {
    "REMOVED from the agent is not legal for request 1 in state starting": lambda rid: [Removed(rid, count=1)],
    "FILE_DATA from the agent is not legal for request 1 in state running":
        lambda rid: [TreeEntries(rid, entries=[{"path": "a"}]), FileData(rid, b"x")],
}


@pytest.mark.parametrize("verdict", list(_LIST_ANSWERS), ids=["removed", "data_between_parts"])
async def test_a_listing_answered_out_of_order_loses_the_host(verdict: str) -> None:
    async with ScriptedAgent(_answer(ListTree, _LIST_ANSWERS[verdict])) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await list_remote(client, "/t")
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert verdict in str(lost.value)


async def test_a_listing_in_parts_ends_on_the_one_that_says_done() -> None:
    script = _answer(ListTree, lambda rid: [TreeEntries(rid, entries=[{"path": "a"}]),
                                            TreeEntries(rid, entries=[{"path": "b"}]),
                                            TreeEntries(rid, entries=[{"path": "c"}], done=True)])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        listing = await list_remote(client, "/t")
        await client.close()
    assert listing is not None and sorted(listing) == ["a", "b", "c"]
    assert agent.errors() == []


async def test_a_removal_answered_with_tree_entries_is_refused() -> None:
    """Without the table the controller ignored the stray answer and waited for REMOVED forever."""
    script = _answer(RemovePaths, lambda rid: [TreeEntries(rid, done=True)])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await RemoveRequest(client, "/t", ["a"]).wait()
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert "TREE_ENTRIES with done true from the agent is not legal for request 1 in state starting" in str(lost.value)


# -- job requests ---------------------------------------------------------------


async def test_a_jobs_list_answered_with_job_killed_is_out_of_order() -> None:
    script = _answer(JobsList, lambda rid: [JobKilled(rid, job="j", processes=1)])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await list_jobs(client)
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert "JOB_KILLED from the agent is not legal for request 1 in state starting" in str(lost.value)


async def test_a_job_kill_answered_twice_is_taken_once() -> None:
    """The first reply ends the request; the second is for a request the controller forgot, and dropped."""
    script = _answer(JobKill, lambda rid: [JobKilled(rid, job="j", processes=2), JobsReply(rid, jobs=[])])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        assert await kill_job(client, "j", 15) == 2
        await client.close()
        await asyncio.wait_for(agent.hung_up.wait(), 15)
    assert agent.errors() == []


async def test_a_job_kill_answered_with_jobs_reply_is_out_of_order() -> None:
    script = _answer(JobKill, lambda rid: [JobsReply(rid, jobs=[])])
    async with ScriptedAgent(script) as agent:
        client = await AgentClient.connect(agent.target)
        with pytest.raises(ShoalConnectionError) as lost:
            await kill_job(client, "j", 15)
        await client.close()
        await _told(agent, ErrorCode.OUT_OF_ORDER)
    assert "JOBS_REPLY from the agent is not legal for request 1 in state starting" in str(lost.value)


async def test_a_job_whose_status_no_process_has_is_shown_as_such_and_the_rest_listed() -> None:
    jobs = [{"job": "a1", "argv": ["true"], "state": "exited", "status": 0},
            {"job": "b2", "argv": ["true"], "state": "exited", "status": 300}]
    async with ScriptedAgent(_answer(JobsList, lambda rid: [JobsReply(rid, jobs=jobs)])) as agent:
        client = await AgentClient.connect(agent.target)
        listed = await list_jobs(client)
        await client.close()
    assert [job_outcome(job) for job in listed] == [job_outcome(jobs[0]), "bad status '300'"]
    assert job_outcome(jobs[0]) == "ok"


def test_a_job_listing_with_times_no_float_holds_shows_that_job_and_the_others() -> None:
    """1e400 decodes to infinity, which no status or start time can be: that one row says so."""
    reply = decode_body(JobsReply.TYPE, 1, b'{"jobs": [{"job": "c3", "argv": ["x"], "state": "exited", '
                        b'"status": 1e400, "started": 1e400}, {"job": "d4", "argv": ["y"], "state": "exited", '
                        b'"status": 0, "started": "noon"}]}')
    assert isinstance(reply, JobsReply)
    assert format_jobs([JobsAnswer("web1", jobs=reply.jobs)]) == (
        "HOST  JOB  STATE             STATUS  USER  STARTED  OUTPUT  COMMAND\n"
        "web1  c3   bad status 'inf'  inf     None  ?        0       x\n"
        "web1  d4   ok                0       None  ?        0       y\n")
