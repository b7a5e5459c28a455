"""File transfer end to end: real agents on loopback, real files, the controller library.

Every agent here gets its own state directory (the journal of temp files), so one
agent's start-up cleanup can never touch another test's transfer in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import AsyncIterator, Iterator

import psutil
import pytest

from shoal.agent.config import KeyPolicy
from shoal.hostio.atomic import TEMP_MARK
from shoal.hostio.keyfile import write_key_file
from shoal.agent.server import Agent
from shoal.controller.client import AgentClient
from shoal.controller.fleet import ConnectOptions
from shoal.controller.targets import Target
from shoal.controller.get import get_file, get_fleet
from shoal.controller.put import PutOptions, PutRequest, put_file, put_fleet
from shoal.controller.transferplan import plan_put
from shoal.protocol.errors import RemoteCommandError
from shoal.protocol.messages import FileData, PutFile
from tests.agents import Configure, config, running_agents, target_for, closed_port as _closed_port
from tests.waiting import wait_for, wait_for_async
from tests.programs import SHOAL_AGENT

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes in 1 MiB pieces (never all in memory); return the sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if TEMP_MARK in name]


@contextlib.asynccontextmanager
async def one_agent(tmp_path: Path, **overrides: object) -> AsyncIterator[tuple[Agent, AgentClient]]:
    async with running_agents(1, state_dir=str(tmp_path / "state"), **overrides) as agents:
        client = await AgentClient.connect(target_for(agents[0], "h1"))
        try:
            yield agents[0], client
        finally:
            await client.close()


async def put(client: AgentClient, local: Path, remote: str, **options: bool):  # type: ignore[no-untyped-def]
    return await put_file(client, plan_put([str(local)], remote, False), remote, PutOptions(**options))


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MiB])
async def test_round_trip_is_byte_exact(tmp_path: Path, size: int) -> None:
    src = tmp_path / "src.bin"
    digest = random_file(src, size)
    (tmp_path / "remote").mkdir()
    async with one_agent(tmp_path) as (_, client):
        put_result = await put(client, src, str(tmp_path / "remote" / "copy.bin"))
        get_result = await get_file(client, str(tmp_path / "remote" / "copy.bin"), str(tmp_path / "back" / "copy.bin"))
    assert put_result.ok and get_result.ok, (put_result, get_result)
    assert sha256_of(tmp_path / "remote" / "copy.bin") == digest
    assert sha256_of(tmp_path / "back" / "copy.bin") == digest
    assert temp_files(tmp_path / "remote") == [] and temp_files(tmp_path / "back") == []


async def test_300_mb_round_trip_streams_with_flat_memory(tmp_path: Path) -> None:
    size = 300 * MiB
    src, remote, back = tmp_path / "big.bin", tmp_path / "remote.bin", tmp_path / "back" / "big.bin"
    numbered_random_file(src, size)
    me = psutil.Process()
    peak = baseline = me.memory_info().rss
    try:
        async with one_agent(tmp_path) as (_, client):
            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, me.memory_info().rss)
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            put_result = await put(client, src, str(remote))
            get_result = await get_file(client, str(remote), str(back))
            sampler.cancel()
        assert put_result.ok and get_result.ok, (put_result, get_result)
        assert same_bytes(src, remote) and same_bytes(src, back)
        # Agent and controller share this process: both windows plus buffers, far below the file.
        assert peak - baseline < 120 * MiB, f"memory grew by {(peak - baseline) // MiB} MiB"
    finally:
        for path in (src, remote, back):
            path.unlink(missing_ok=True)


def numbered_random_file(path: Path, size: int) -> None:
    """Random bytes made fast: one random MiB, each copy stamped with its index."""
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for index in range(0, size, MiB):
            out.write((index // MiB).to_bytes(8, "big") + block[8:min(MiB, size - index)])


def same_bytes(a: Path, b: Path) -> bool:
    """Compare two files a MiB at a time (never whole in memory)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


async def test_mode_kept_and_mtime_only_with_preserve(tmp_path: Path) -> None:
    src = tmp_path / "script.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src, 0o751)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    (tmp_path / "r").mkdir()
    async with one_agent(tmp_path) as (_, client):
        assert (await put(client, src, str(tmp_path / "r" / "plain"))).ok
        assert (await put(client, src, str(tmp_path / "r" / "kept"), preserve=True)).ok
        assert (await get_file(client, str(tmp_path / "r" / "kept"), str(tmp_path / "g" / "kept"), preserve=True)).ok
    for name in ("r/plain", "r/kept", "g/kept"):
        assert (tmp_path / name).stat().st_mode & 0o7777 == 0o751, name
    assert (tmp_path / "r" / "kept").stat().st_mtime == 1_000_000_000
    assert (tmp_path / "g" / "kept").stat().st_mtime == 1_000_000_000
    assert (tmp_path / "r" / "plain").stat().st_mtime > 1_000_000_000


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
async def test_owner_kept_when_asked(tmp_path: Path) -> None:
    src = tmp_path / "owned"
    src.write_bytes(b"x")
    os.chown(src, 12345, 23456)
    (tmp_path / "r").mkdir()
    async with one_agent(tmp_path) as (_, client):
        assert (await put(client, src, str(tmp_path / "r" / "with"), owner=True)).ok
        assert (await put(client, src, str(tmp_path / "r" / "without"))).ok
    st = (tmp_path / "r" / "with").stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456)
    assert (tmp_path / "r" / "without").stat().st_uid == 0


# -- fleets ------------------------------------------------------------------------


def separately(tmp_path: Path) -> Configure:
    """Agent i's configuration: a state directory and an audit log of its own."""
    return lambda i: config(state_dir=str(tmp_path / f"state{i}"), audit_log=str(tmp_path / f"audit{i}.jsonl"))


def audit_events(path: Path, event: str) -> list[dict[str, object]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == event]


async def test_put_to_ten_agents_commits_on_each(tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    digest = random_file(src, 3 * MiB + 17)
    (tmp_path / "dest").mkdir()
    async with running_agents(10, configure=separately(tmp_path)) as agents:
        targets = [target_for(a, f"node{i:02d}") for i, a in enumerate(agents)]
        plan = plan_put([str(src)], str(tmp_path / "dest") + "/", False)
        result = await put_fleet(targets, ConnectOptions(), plan, str(tmp_path / "dest") + "/")
    assert result.status == 0 and sorted(r.host for r in result.results) == [t.name for t in targets]
    assert sha256_of(tmp_path / "dest" / "payload.bin") == digest
    for i in range(10):
        done = audit_events(tmp_path / f"audit{i}.jsonl", "put_done")
        assert [(e["path"], e["bytes"]) for e in done] == [(str(tmp_path / "dest" / "payload.bin"), 3 * MiB + 17)]


async def test_get_from_ten_agents_into_per_host_directories(tmp_path: Path) -> None:
    remote = tmp_path / "served.bin"
    digest = random_file(remote, 2 * MiB + 5)
    os.chmod(remote, 0o604)
    async with running_agents(10, state_dir=str(tmp_path / "state")) as agents:
        targets = [target_for(a, f"node{i:02d}") for i, a in enumerate(agents)]
        targets.append(Target(name="gone", host="127.0.0.1", port=_closed_port()))
        result = await get_fleet(targets, ConnectOptions(timeout=5), str(remote), str(tmp_path / "out"))
    by_host = result.by_host()
    assert by_host["gone"].status == 255 and result.status == 255
    assert sorted(os.listdir(tmp_path / "out")) == [f"node{i:02d}" for i in range(10)]
    for i in range(10):
        copy = tmp_path / "out" / f"node{i:02d}" / "served.bin"
        assert by_host[f"node{i:02d}"].ok
        assert sha256_of(copy) == digest and copy.stat().st_mode & 0o777 == 0o604


# -- errors ------------------------------------------------------------------------


async def test_per_host_errors_name_the_problem(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    (tmp_path / "adir").mkdir()
    async with one_agent(tmp_path) as (_, client):
        missing = await get_file(client, str(tmp_path / "nope"), str(tmp_path / "g" / "x"))
        a_dir = await get_file(client, str(tmp_path / "adir"), str(tmp_path / "g" / "y"))
        no_parent = await put(client, src, str(tmp_path / "no" / "such" / "f"))
        onto_dir = await put(client, src, str(tmp_path / "adir") + "/")
        relative = await put(client, src, "relative/path")
    assert (missing.status, missing.error_code, missing.error) == (1, "not_found", f"{tmp_path}/nope: no such file or directory")
    assert (a_dir.error_code, a_dir.error) == ("is_directory", f"{tmp_path}/adir: is a directory")
    assert no_parent.error_code == "not_found" and no_parent.status == 1
    assert onto_dir.ok and (tmp_path / "adir" / "f").read_bytes() == b"data"
    assert relative.error_code == "bad_path"
    assert not (tmp_path / "g").exists() or os.listdir(tmp_path / "g") == []


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the block (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN in this container)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def test_disk_full_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "1m") as small:
        (small / "old").write_bytes(b"old content")
        src = tmp_path / "big"
        random_file(src, 2 * MiB)
        async with one_agent(tmp_path) as (_, client):
            result = await put(client, src, str(small / "old"))
        assert result.status == 1 and result.error_code == "no_space"
        assert "no space left on device" in (result.error or "")
        assert (small / "old").read_bytes() == b"old content" and temp_files(small) == []


async def test_disk_filling_up_while_writing_fails_the_put_and_leaves_nothing(tmp_path: Path) -> None:
    """The up-front free-space check passes (the PUT_FILE announces one byte), so the
    disk fills while chunks are being written: still a clean no_space error."""
    with small_tmpfs(tmp_path / "small", "1m") as small:
        async with one_agent(tmp_path) as (_, client):
            request = PutRequest(client, {"path": str(small / "f"), "size": 1})
            await request.wait_open()
            with pytest.raises(RemoteCommandError) as failed:
                await request.send(os.urandom(3 * MiB), lambda n: None)
                request.end(hashlib.sha256(b"x").hexdigest())
                await request.wait_done()
            still = await client.ping()
        assert failed.value.code == "no_space" and still is not None
        assert os.listdir(small) == []


async def test_get_into_a_full_local_disk_fails_that_host_and_leaves_nothing(tmp_path: Path) -> None:
    remote = tmp_path / "served.bin"
    random_file(remote, 3 * MiB)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        async with one_agent(tmp_path) as (_, client):
            result = await get_file(client, str(remote), str(small / "copy.bin"))
            still = await client.ping()
        assert (result.status, result.error_code) == (1, "no_space"), result
        assert str(small / "copy.bin") in (result.error or "")
        assert os.listdir(small) == [] and still is not None


# -- authorization -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def keyed_client(tmp_path: Path, **policy: object) -> AsyncIterator[AgentClient]:
    """An agent whose only key carries `policy`, and a client holding that key."""
    key_path = tmp_path / "files.key"
    key = write_key_file(key_path)
    files = KeyPolicy(name="files", file=str(key_path), **policy)  # type: ignore[arg-type]
    async with running_agents(policies=(files,), state_dir=str(tmp_path / "state"),
                              audit_log=str(tmp_path / "audit.jsonl")) as (agent,):
        client = await AgentClient.connect(target_for(agent, "h1"), key=key)
        yield client
        await client.close()


async def test_escapes_from_file_roots_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "link").symlink_to(outside)
    (root / "secret-link").symlink_to(outside / "secret")
    src = tmp_path / "f"
    src.write_bytes(b"payload")
    async with keyed_client(tmp_path, files=True, file_roots=(str(root),)) as client:
        inside = await put(client, src, str(root / "ok"))
        dotdot = await put(client, src, str(root / ".." / "outside" / "new"))
        via_link = await put(client, src, str(root / "link" / "new"))
        get_link = await get_file(client, str(root / "secret-link"), str(tmp_path / "g" / "s"))
    assert inside.ok and (root / "ok").read_bytes() == b"payload"
    for result in (dotdot, via_link, get_link):
        assert (result.status, result.error_code) == (1, "outside_root"), result
    assert "outside the directories this key may use" in (dotdot.error or "")
    assert sorted(os.listdir(outside)) == ["secret"] and not (tmp_path / "g").exists()
    denied = audit_events(tmp_path / "audit.jsonl", "denied")
    assert len(denied) == 3 and {e["reason"] for e in denied} == {"outside file roots"}


async def test_key_without_files_gets_permission_denied(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    async with keyed_client(tmp_path, commands=("true",)) as client:
        result = await put(client, src, str(tmp_path / "copy"))
    assert (result.status, result.error_code) == (1, "permission_denied")
    assert not (tmp_path / "copy").exists()
    assert [e["action"] for e in audit_events(tmp_path / "audit.jsonl", "denied")] == ["put"]


# -- interruptions -----------------------------------------------------------------


class StopAfter:
    """Progress that aborts the controller's connection after `limit` bytes went out."""

    def __init__(self, client: AgentClient, limit: int) -> None:
        self.client, self.limit, self.sent = client, limit, 0

    def expect(self, n: int) -> None:
        pass

    def dropped(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        self.sent += n
        if self.sent >= self.limit:
            self.client.abort()


async def test_controller_gone_mid_put_keeps_the_old_file(tmp_path: Path) -> None:
    src = tmp_path / "new.bin"
    random_file(src, 40 * MiB)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    (dest_dir / "f").write_bytes(b"old")
    async with one_agent(tmp_path) as (agent, client):
        stop = StopAfter(client, 4 * MiB)
        result = await put_file(client, plan_put([str(src)], str(dest_dir / "f"), False), str(dest_dir / "f"),
                                progress=stop)
        await wait_for_async(lambda: not any(s.requests for s in agent.sessions) and temp_files(dest_dir) == [],
                             what="the agent to drop the transfer")
    assert result.status == 255 and stop.sent >= 4 * MiB
    assert (dest_dir / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path / "state" / "transfers") == []


async def test_agent_killed_mid_put_leaves_old_file_and_restart_cleans(tmp_path: Path) -> None:
    src = tmp_path / "new.bin"
    random_file(src, 64 * MiB)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    (dest_dir / "f").write_bytes(b"old")
    port = _closed_port()
    agent = _agent_process(port, tmp_path / "state")
    try:
        client = await AgentClient.connect(Target(name="h1", host="127.0.0.1", port=port))
        task = asyncio.create_task(put(client, src, str(dest_dir / "f")))
        await wait_for_async(lambda: temp_files(dest_dir) != [] and os.path.getsize(dest_dir / temp_files(dest_dir)[0]) > 0,
                             what="the temp file to receive data")
        agent.send_signal(signal.SIGKILL)
        result = await task
        await client.close()
    finally:
        agent.kill()
        agent.wait()
    assert result.status == 255
    assert (dest_dir / "f").read_bytes() == b"old" and len(temp_files(dest_dir)) == 1
    agent = _agent_process(port, tmp_path / "state")
    try:
        assert temp_files(dest_dir) == [] and (dest_dir / "f").read_bytes() == b"old"
    finally:
        agent.terminate()
        agent.wait()


def _agent_process(port: int, state_dir: Path) -> subprocess.Popen[bytes]:
    """A real `shoal-agent` process, returned once it accepts connections."""
    proc = subprocess.Popen([*SHOAL_AGENT, "--listen", f"127.0.0.1:{port}",
                             "--state-dir", str(state_dir), "--log-level", "error"], cwd=ROOT)
    try:
        wait_for(lambda: _accepts(port), what=f"the agent to listen on port {port}")
    except AssertionError:
        proc.kill()
        raise
    return proc


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


async def test_data_beyond_the_window_is_a_protocol_error(tmp_path: Path) -> None:
    """FILE_DATA sent before FILE_INFO granted any window overruns a window of zero.

    Both frames are written before this task yields, so the agent reads them together,
    before its FILE_INFO can go out: the overrun is certain.  (Overrunning a granted
    window cannot be forced from outside: the agent grants bytes back as its disk
    writes finish, so whether 9 MiB overruns 8 MiB depends on the disk's speed.)
    """
    async with one_agent(tmp_path) as (agent, client):
        rid = client.new_request_id()
        client.send(PutFile(rid, path=str(tmp_path / "x"), size=1024))
        client.send(FileData(rid, bytes(1024)))
        await wait_for_async(lambda: client.closed, what="the agent to close the connection")
        await wait_for_async(lambda: not agent.sessions, what="the agent to drop the session")
    assert "window_exceeded" in (client.close_reason or "")
    await wait_for_async(lambda: temp_files(tmp_path) == [], what="the temp file to go")
    assert not (tmp_path / "x").exists()
