"""Small files in few requests (issue 18 point 5): PUT_BATCH on real agents over loopback.

What a user can check: the tree arrives whole and byte-exact, the agent's audit log
shows a few batches instead of one request per file, a file that cannot be written
fails alone, and an agent that predates batches still gets every file. The wire
rules (the batch's window, its order on a connection, its per-entry checks) are
driven with the library's own requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from shoal.controller.client import AgentClient
from shoal.controller.putbatch import BATCH_FILES, SMALL_FILE, BatchRequest
from shoal.protocol.defaults import MAX_BATCH_FILES
from shoal.protocol.errors import RemoteCommandError, ShoalConnectionError
from shoal.protocol.messages import FileData, FileEnd
from tests.agents import AgentThread, running_agents, shoal, target_for
from tests.rawpeer import audit_events
from tests.e2e.test_treesync import tree_of


def make_many(root: Path, files: int) -> Path:
    """`files` small files in nested directories, some empty, and one file too big for a batch."""
    site = root / "site"
    for i in range(files):
        directory = site / f"d{i // 50:02d}" / ("deep" if i % 3 else "")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:04d}").write_bytes(os.urandom(i % 700))
    (site / "empty-dir").mkdir()
    (site / "big.bin").write_bytes(os.urandom(SMALL_FILE * 3))
    return site


def test_a_tree_of_small_files_goes_in_a_few_batches(capsysbinary: pytest.CaptureFixture[bytes],
                                                     tmp_path: Path) -> None:
    site = make_many(tmp_path, 600)
    audit = tmp_path / "audit.jsonl"
    dest = tmp_path / "www"
    with AgentThread(audit_log=str(audit), state_dir=str(tmp_path / "state")) as agent:
        status, out, err = shoal(capsysbinary, "put", agent.addresses[0], "-r", "-p", f"{site}/", str(dest))
        assert (status, out) == (0, b""), err
        assert b": 601 sent, 0 skipped" in err
        status, _, err = shoal(capsysbinary, "put", agent.addresses[0], "-r", "-p", f"{site}/", str(dest))
        assert status == 0 and b": 0 sent, 601 skipped, 0 B\n" in err
    assert tree_of(dest) == tree_of(site)
    for name in ("f0001", "f0599", "big.bin"):  # -p kept the mtimes
        sent, got = next(site.rglob(name)).stat().st_mtime, next(dest.rglob(name)).stat().st_mtime
        assert abs(sent - got) < 1e-6
    batches = audit_events(audit, event="put_batch")
    entries = 600 + len([p for p in site.rglob("*") if p.is_dir()])
    assert len(batches) == -(-entries // BATCH_FILES)  # as few as the batch size allows
    assert sum(b["files"] for b in batches) == entries
    assert [e["path"] for e in audit_events(audit, event="put")] == [str(dest / "big.bin")]  # the one sent alone
    assert len(audit_events(audit, event="put_done")) == 601


def test_a_file_that_cannot_be_written_fails_alone(capsysbinary: pytest.CaptureFixture[bytes],
                                                   tmp_path: Path) -> None:
    site = make_many(tmp_path, 40)
    dest = tmp_path / "www"
    (dest / "d00" / "f0000").mkdir(parents=True)  # a directory where the source has a file
    with AgentThread(state_dir=str(tmp_path / "state")) as agent:
        status, _, err = shoal(capsysbinary, "put", agent.addresses[0], "-r", f"{site}/", str(dest))
    assert status == 1
    assert err.endswith(f"shoal: {agent.addresses[0]}: {dest}/d00/f0000: is a directory\n".encode())
    assert b": 40 sent, 0 skipped" in err  # all but the one, the big file (sent alone) included
    assert (dest / "d00" / "f0000").is_dir()
    assert (dest / "d00" / "deep" / "f0001").read_bytes() == (site / "d00" / "deep" / "f0001").read_bytes()


def test_an_agent_without_batches_gets_every_file_alone(capsysbinary: pytest.CaptureFixture[bytes],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shoal.protocol.connection.AGENT_FEATURES", ("idle_timeout",))  # an agent from before
    site = make_many(tmp_path, 30)
    audit = tmp_path / "audit.jsonl"
    with AgentThread(audit_log=str(audit), state_dir=str(tmp_path / "state")) as agent:
        status, _, err = shoal(capsysbinary, "put", agent.addresses[0], "-r", f"{site}/", str(tmp_path / "www"))
    assert status == 0, err
    assert tree_of(tmp_path / "www") == tree_of(site)
    assert audit_events(audit, event="put_batch") == []
    assert len(audit_events(audit, event="put")) == 31


# -- the wire --------------------------------------------------------------------


def _entry(path: Path, data: bytes, **extra: object) -> dict[str, object]:
    return {"path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


async def test_batches_apply_in_order_and_each_entry_is_checked(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tmp_path / "outside").mkdir()
    (tree / "link").symlink_to(tmp_path / "outside")
    async with running_agents(state_dir=str(tmp_path / "state")) as (agent,):
        client = await AgentClient.connect(target_for(agent))
        # The second batch fills a directory the first creates; both are sent before either is done.
        first = BatchRequest(client, str(tree), [{"path": str(tree / "new"), "dir": True, "mode": 0o750}], b"")
        bad = _entry(tree / "new" / "bad", b"x")
        bad["sha256"] = "0" * 64
        entries = [_entry(tree / "new" / "a", b"aaa", mode=0o600), bad, _entry(tree / "link" / "c", b"c"),
                   _entry(tree / "new" / "b", b"")]
        second = BatchRequest(client, str(tree), entries, b"aaa" + b"x" + b"c")
        done = await asyncio.gather(first.wait(), second.wait())
        await client.close()
    assert (done[0].written, done[0].errors) == (1, [])
    assert (done[1].written, done[1].bytes) == (2, 3)
    assert [(e["index"], e["code"]) for e in done[1].errors] == [(1, "checksum_mismatch"), (2, "bad_path")]
    assert "is a symbolic link" in done[1].errors[1]["message"]
    assert sorted(os.listdir(tree / "new")) == ["a", "b"]  # no temp file left of the bad one
    assert (tree / "new").stat().st_mode & 0o777 == 0o750
    assert (tree / "new" / "a").stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "outside") == []


@pytest.mark.parametrize("entries, field", [
    ([{"path": "/x", "size": 1, "sha256": "a" * 64}] * (MAX_BATCH_FILES + 1), "files: holds"),
    ([{"path": "/x", "size": 5 * 1024 * 1024, "sha256": "a" * 64}], "files: sizes add up"),
    ([{"path": "/x", "size": 1, "sha256": "A" * 64}], "files[0].sha256"),
    ([{"path": "/x", "dir": True, "size": 3}], "files[0].size"),
    ([{"path": 7}], "files[0].path"),
    ([{"path": "/x", "size": 1, "sha256": "a" * 64, "owner": [1]}], "files[0].owner"),
])
async def test_a_batch_breaking_a_rule_is_refused_whole(tmp_path: Path, entries: list[dict[str, object]],
                                                        field: str) -> None:
    async with running_agents(state_dir=str(tmp_path / "state")) as (agent,):
        client = await AgentClient.connect(target_for(agent))
        size = sum(int(e.get("size", 0)) for e in entries if isinstance(e.get("size"), int))
        with pytest.raises(RemoteCommandError) as refused:
            await BatchRequest(client, str(tmp_path), entries, bytes(min(size, 1 << 20))).wait()
        await client.ping()  # the connection carries on; the data sent was dropped
        await client.close()
    assert refused.value.code == "bad_request" and f"bad PUT_BATCH: {field}" in str(refused.value)
    assert set(os.listdir(tmp_path)) <= {"state"}  # nothing written


@pytest.mark.parametrize("extra", [FileData, FileEnd])
async def test_data_past_a_batch_or_a_file_end_closes_the_connection(tmp_path: Path, extra: type) -> None:
    async with running_agents(state_dir=str(tmp_path / "state")) as (agent,):
        client = await AgentClient.connect(target_for(agent))
        request = BatchRequest(client, str(tmp_path), [_entry(tmp_path / "f", b"ab")], b"a")
        client.send(FileData(request.request_id, b"bc") if extra is FileData else FileEnd(request.request_id))
        with pytest.raises(ShoalConnectionError) as lost:
            await request.wait()
        await client.close()
    assert ("window" if extra is FileData else "FILE_END") in str(lost.value)
    assert not (tmp_path / "f").exists()

