"""Jobs (issue 16, points 4-6): run --detach, shoal jobs, attach, kill.

A real `shoal-agent` subprocess on loopback and the real `shoal` CLI as
subprocesses, so a controller can be SIGKILLed between the steps and the agent
sent SIGHUP; process trees are checked in the process table (tests/debris.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from shoal.controller.jobs import kill_job, list_jobs
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.defaults import DATA_CHUNK
from shoal.protocol.errors import RemoteCommandError
from tests.agents import running_agents, shoal, target_for
from tests.debris import marked, marker_of
from tests.waiting import wait_for, wait_for_async
from tests.e2e.test_lifecycle import AgentProcess
from tests.programs import SHOAL

ENTRY = '[[keys]]\nname = "{0}"\nfile = "{1}"\n{2}\n'


def cli(*argv: str, stdout: object = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*SHOAL, *argv], stdin=subprocess.DEVNULL, stdout=stdout,  # type: ignore[arg-type]
                            stderr=subprocess.PIPE)


def finished(*argv: str) -> tuple[int, bytes, bytes]:
    proc = cli(*argv)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def start_job(key: Path, target: str, command: str) -> str:
    status, out, err = finished("run", "--key-file", str(key), target, "--detach", "--", command)
    assert (status, err) == (0, b"")
    host, _, rest = out.decode().partition(": job ")
    assert host == target and rest.endswith("\n")
    return rest.strip()


def listed(key: Path, target: str) -> dict[str, dict[str, object]]:
    status, out, err = finished("jobs", "--key-file", str(key), target, "--json")
    assert status == 0, err
    return {j["job"]: j for j in map(json.loads, out.splitlines())}


@pytest.fixture
def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = {name: write_key_file(tmp_path / f"{name}.key") for name in ("admin", "owner", "other")}
    del keys
    conf = tmp_path / "agent.toml"
    conf.write_text(ENTRY.format("admin", tmp_path / "admin.key", 'allow = "all"')
                    + ENTRY.format("owner", tmp_path / "owner.key", 'commands = ["sleep 3600"]')
                    + ENTRY.format("other", tmp_path / "other.key", 'commands = ["sleep 3600"]'))
    proc = AgentProcess(tmp_path, "--config", str(conf), "--listen", "127.0.0.1:0", "--log-level", "info")
    try:
        yield proc
    finally:
        proc.stop()


def test_detach_list_attach_kill_across_dead_controllers_and_a_sighup(agent: AgentProcess, tmp_path: Path) -> None:
    target = agent.target()
    spec = f"127.0.0.1:{target.port}"
    key = tmp_path / "admin.key"
    flag = tmp_path / "go"
    job = start_job(key, spec, f"printf 'one\\n\\000\\377two'; echo err >&2; "
                               f"while [ ! -e {flag} ]; do sleep 0.05; done; printf ' tail'; exit 7")
    # the detached run returned at once: the job is still running, waiting for the flag
    info = listed(key, spec)[job]
    assert (info["state"], info["status"], info["user"]) == ("running", None, _me())
    token = marker_of(int(info["pid"]))  # type: ignore[arg-type]
    # a controller following the job is SIGKILLed mid-way; the job carries on
    out = tmp_path / "attach.out"
    with open(out, "wb") as sink:
        follower = cli("attach", "--key-file", str(key), spec, job, stdout=sink)
        wait_for(lambda: out.read_bytes() == b"one\n\x00\xfftwo", timeout=15)
        follower.send_signal(signal.SIGKILL)
        follower.communicate(timeout=10)
    agent.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in agent.text(), timeout=10)
    assert listed(key, spec)[job]["state"] == "running" and marked(token)
    flag.touch()
    status, replay, err = finished("attach", "--key-file", str(key), spec, job)
    assert (status, replay, err) == (7, b"one\n\x00\xfftwo tail", f"err\nshoal: {spec}: failed (code 7)\n".encode())
    info = listed(key, spec)[job]
    assert (info["state"], info["status"], info["output_bytes"], info["kept_bytes"]) == ("exited", 7, 18, 18)
    # JSON mode: a `job` event, then the same bytes and status through attach
    status, out_json, _ = finished("run", "--key-file", str(key), spec, "--detach", "-o", "json", "--",
                                   "sleep 3600 & sleep 3600 & wait")
    events = [json.loads(line) for line in out_json.splitlines()]
    assert status == 0 and [e["event"] for e in events] == ["start", "job", "summary"]
    tree_job = events[1]["job"]
    tree = marker_of(int(listed(key, spec)[tree_job]["pid"]))  # type: ignore[arg-type]
    wait_for(lambda: len(marked(tree)) == 3)
    status, said, err = finished("kill", "--key-file", str(key), spec, tree_job, "--signal", "KILL")
    assert (status, said, err) == (0, f"{spec}: killed job {tree_job} (3 processes)\n".encode(), b"")
    wait_for(lambda: not marked(tree), timeout=10)
    wait_for(lambda: listed(key, spec)[tree_job]["state"] == "killed", timeout=10)
    status, out_json, _ = finished("attach", "--key-file", str(key), spec, tree_job, "-o", "json")
    assert status == 128 + signal.SIGKILL
    assert json.loads(out_json.splitlines()[-2])["status"] == 128 + signal.SIGKILL


def test_a_job_is_seen_only_by_its_key_and_allow_all_keys(agent: AgentProcess, tmp_path: Path,
                                                          capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    spec = f"127.0.0.1:{agent.target().port}"
    owner, other, admin = (str(tmp_path / f"{n}.key") for n in ("owner", "other", "admin"))
    job = start_job(Path(owner), spec, "sleep 3600")
    assert list(listed(Path(owner), spec)) == [job]
    assert list(listed(Path(admin), spec)) == [job]
    assert listed(Path(other), spec) == {}
    for verb in ("attach", "kill"):
        status, out, err = shoal(capsysbinary, verb, "--key-file", other, spec, job)
        assert status == 255 and b"no job" in err and job.encode() in err, (verb, out, err)
    token = marker_of(int(listed(Path(admin), spec)[job]["pid"]))  # type: ignore[arg-type]
    tree = marked(token)
    assert tree  # the other key's kill did nothing
    status, out, _ = shoal(capsysbinary, "kill", "--key-file", admin, spec, job)
    noun = "process" if len(tree) == 1 else "processes"
    assert status == 0 and out == f"{spec}: killed job {job} ({len(tree)} {noun})\n".encode()
    wait_for(lambda: not marked(token), timeout=10)


async def test_kept_output_is_head_and_tail_and_a_finished_job_expires() -> None:
    async with running_agents(**{"limits.job_output_size": 64, "limits.job_retention": 3600.0}) as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=10)
        try:
            started = await (await client.exec(Command(shell="seq 1000 1999 | tr -d '\\n'", detach=True))).wait()
            assert started.job is not None and started.status == 0
            await wait_for_async(lambda: agent.jobs.jobs[started.job].result is not None, timeout=10)  # type: ignore[index]
            proc = await client.exec(Command(attach=started.job))
            chunks = [(e.stream, e.data) async for e in proc]
            result = await proc.wait()
            everything = "".join(str(n) for n in range(1000, 2000)).encode()
            stdout = b"".join(d for s, d in chunks if s == "stdout")
            assert stdout == everything[:32] + everything[-32:]
            assert chunks[1] == ("stderr", f"[shoal: {len(everything) - 64} bytes of this job's output were "
                                           f"not kept]\n".encode())
            assert (result.status, result.stdout_bytes) == (0, len(everything))
            [row] = await list_jobs(client)
            assert (row["output_bytes"], row["kept_bytes"], row["state"]) == (len(everything), 64, "exited")
            agent.config = agent.config.replace_from_cli(**{"limits.job_retention": 0.0})
            again = await (await client.exec(Command(shell="true", detach=True))).wait()
            await wait_for_async(lambda: again.job not in agent.jobs.jobs, timeout=10)
            with pytest.raises(RemoteCommandError) as info:
                await kill_job(client, str(again.job), 15)
            assert info.value.code == "unknown_job"
        finally:
            await client.close()


def _me() -> str:
    import os
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


async def test_attach_follows_live_output_past_its_window_byte_exact(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = (f"head -c 3000000 /dev/urandom > {tmp_path}/blob; cat {tmp_path}/blob; "
              f"while [ ! -e {flag} ]; do sleep 0.05; done; cat {tmp_path}/blob; exit 5")
    async with running_agents(**{"limits.job_output_size": 8_000_000}) as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=10)
        try:
            job = (await (await client.exec(Command(shell=script, detach=True))).wait()).job
            assert job is not None
            await wait_for_async(lambda: agent.jobs.jobs[job].bytes[1] == 3_000_000, timeout=20)
            proc = await client.exec(Command(attach=job), window=65536)
            got = bytearray()
            async for event in proc:
                got += event.data
                if len(got) == 3_000_000:
                    flag.touch()  # the second half arrives live
            result = await proc.wait()
            blob = (tmp_path / "blob").read_bytes()
            assert bytes(got) == blob + blob and (result.status, result.stdout_bytes) == (5, 6_000_000)
        finally:
            await client.close()


def test_script_does_not_go_with_detach(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    script = tmp_path / "s.sh"
    script.write_text("echo hi\n")
    status, out, err = shoal(capsysbinary, "run", "127.0.0.1:1", "--detach", "--script", str(script))
    assert (status, out) == (2, b"") and b"--script: cannot go with --detach" in err


async def test_an_attach_that_falls_behind_is_bounded_and_told(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = f"while [ ! -e {flag} ]; do sleep 0.05; done; head -c 4000000 /dev/zero; echo; echo last"
    async with running_agents(**{"limits.job_output_size": 100_000}) as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=10)
        try:
            job = (await (await client.exec(Command(shell=script, detach=True))).wait()).job
            assert job is not None
            proc = await client.exec(Command(attach=job), window=65536)  # and nothing read for now
            flag.touch()
            await wait_for_async(lambda: agent.jobs.jobs[job].result is not None, timeout=20)
            events = [(e.stream, e.data) async for e in proc]
            result = await proc.wait()
            stdout = b"".join(d for s, d in events if s == "stdout")
            notes = [d for s, d in events if s == "stderr"]
            # bounded by the window, the limit and the one read that overflowed it; the
            # newline before "last" may be in the tail of a chunk that was dropped
            assert stdout.endswith(b"last\n") and len(stdout) <= 65536 + 100_000 + DATA_CHUNK
            [note] = notes
            dropped = int(note.split()[1])
            assert dropped + len(stdout) == 4_000_000 + len(b"\nlast\n")
            assert note == f"[shoal: {dropped} bytes of this job's output were dropped: the attach fell behind]\n".encode()
            assert result.status == 0 and result.stdout_bytes == 4_000_006
        finally:
            await client.close()
