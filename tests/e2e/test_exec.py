"""End to end through real loopback sockets and real subprocesses: the core path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.result import Result
from shoal.controller.targets import Target
from tests.agents import closed_port as _closed_port, running_agents, target_for


class Collect:
    """A fleet handler that keeps everything, per host and stream."""

    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {}
        self.err: dict[str, bytearray] = {}
        self.results: dict[str, Result] = {}

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        (self.out if stream == "stdout" else self.err).setdefault(host, bytearray()).extend(data)

    def on_result(self, result: Result) -> None:
        self.results[result.host] = result


async def run_one(target: Target, command: Command) -> tuple[bytes, bytes, Result]:
    client = await AgentClient.connect(target, timeout=5)
    try:
        proc = await client.exec(command)
        out, err = bytearray(), bytearray()
        async for ev in proc:
            (out if ev.stream == "stdout" else err).extend(ev.data)
        return bytes(out), bytes(err), await proc.wait()
    finally:
        await client.close()


async def test_echo_and_exit_zero() -> None:
    async with running_agents() as (agent,):
        out, err, res = await run_one(target_for(agent), Command(shell="echo hello; echo oops >&2"))
    assert out == b"hello\n" and err == b"oops\n"
    assert res.status == 0 and res.code == 0 and res.error is None


@pytest.mark.parametrize("code", [1, 42, 255])
async def test_exit_codes_are_reported(code: int) -> None:
    async with running_agents() as (agent,):
        _, _, res = await run_one(target_for(agent), Command(shell=f"exit {code}"))
    assert res.status == code and res.code == code and res.signal is None


async def test_death_by_signal_is_128_plus_n() -> None:
    async with running_agents() as (agent,):
        _, _, res = await run_one(target_for(agent), Command(shell="kill -9 $$"))
    assert res.signal == signal.SIGKILL and res.status == 128 + 9 and res.code is None


async def test_argv_runs_without_a_shell() -> None:
    async with running_agents() as (agent,):
        out, _, res = await run_one(target_for(agent), Command(argv=["printf", "%s|", "a b", "$HOME", ";"]))
    assert out == b"a b|$HOME|;|" and res.status == 0


async def test_env_and_cwd_are_applied(tmp_path: object) -> None:
    async with running_agents() as (agent,):
        out, _, _ = await run_one(target_for(agent), Command(shell='echo "$GREETING"; pwd', env={"GREETING": "hi there"}, cwd="/tmp"))
    assert out == b"hi there\n/tmp\n"


async def test_command_not_found_is_127_with_a_clear_error() -> None:
    async with running_agents() as (agent,):
        _, _, res = await run_one(target_for(agent), Command(argv=["/no/such/program"]))
    assert res.status == 127 and res.error_code == "not_found"
    assert "command not found" in (res.error or "")


async def test_shell_command_not_found_is_127_from_the_shell() -> None:
    async with running_agents() as (agent,):
        _, err, res = await run_one(target_for(agent), Command(shell="no-such-command-xyz"))
    assert res.status == 127 and b"not found" in err


async def test_not_executable_is_126(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "script")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    async with running_agents() as (agent,):
        _, _, res = await run_one(target_for(agent), Command(argv=[script]))
    assert res.status == 126 and res.error_code == "not_executable"


async def test_bad_cwd_is_a_clear_error() -> None:
    async with running_agents() as (agent,):
        _, _, res = await run_one(target_for(agent), Command(shell="true", cwd="/no/such/dir"))
    assert res.status == 126 and res.error_code == "bad_cwd" and "/no/such/dir" in (res.error or "")


@pytest.mark.parametrize("command", [Command(argv=[]), Command(shell="   ")])
async def test_empty_command_is_a_clear_error_and_the_connection_survives(command: Command) -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            res = await (await client.exec(command)).wait()
            assert res.error_code == "empty_command" and res.status != 0
            again = await (await client.exec(Command(shell="echo still here"))).wait()
            assert again.status == 0
        finally:
            await client.close()


async def test_output_is_streamed_before_the_command_ends() -> None:
    # The command prints, then waits for stdin: we can only see "ready" if it was
    # sent while the command was still running.
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell="echo ready; read line; echo got $line", stdin=True))
            first = await proc.__anext__()
            assert first.data == b"ready\n" and proc.result is None
            await proc.write(b"go\n")
            proc.close_stdin()
            rest = b"".join([ev.data async for ev in proc])
            assert rest == b"got go\n"
            assert (await proc.wait()).status == 0
        finally:
            await client.close()


async def test_stdout_and_stderr_each_keep_their_order() -> None:
    script = "for i in $(seq 1 2000); do echo out$i; echo err$i >&2; done"
    async with running_agents() as (agent,):
        out, err, res = await run_one(target_for(agent), Command(shell=script))
    assert out.decode().split() == [f"out{i}" for i in range(1, 2001)]
    assert err.decode().split() == [f"err{i}" for i in range(1, 2001)]


async def test_100mb_of_random_binary_arrives_byte_exact(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "blob")
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(100):
            chunk = os.urandom(1_000_000)
            digest.update(chunk)
            f.write(chunk)
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(argv=["cat", path]))
            got = hashlib.sha256()
            size = 0
            async for ev in proc:
                assert ev.stream == "stdout"
                got.update(ev.data)
                size += len(ev.data)
            assert (await proc.wait()).status == 0
        finally:
            await client.close()
    assert size == 100_000_000 and got.hexdigest() == digest.hexdigest()


async def test_stdin_is_delivered_byte_exact() -> None:
    data = os.urandom(3_000_000)
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell="sha256sum", stdin=True))
            await proc.write(data)
            proc.close_stdin()
            out = b"".join([ev.data async for ev in proc])
        finally:
            await client.close()
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_50_concurrent_commands_on_one_connection() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            procs = [await client.exec(Command(shell=f"sleep 0.2; echo {i}")) for i in range(50)]

            async def collect(p):  # type: ignore[no-untyped-def]
                return b"".join([ev.data async for ev in p]), await p.wait()

            results = await asyncio.gather(*(collect(p) for p in procs))
        finally:
            await client.close()
    assert [out for out, _ in results] == [f"{i}\n".encode() for i in range(50)]
    assert all(res.status == 0 for _, res in results)


async def test_20_agents_at_once_with_an_unreachable_host_among_them() -> None:
    async with running_agents(20) as agents:
        targets = [target_for(a, f"node{i:02d}") for i, a in enumerate(agents)]
        dead = Target(name="dead", host="127.0.0.1", port=_closed_port())
        handler = Collect()
        result = await Fleet(targets[:10] + [dead] + targets[10:], ConnectOptions(timeout=5)).run(
            Command(shell="echo $SHOAL_TEST_X ok"), handler)
    assert len(result.results) == 21
    for t in targets:
        assert handler.out[t.name] == b"ok\n" and handler.results[t.name].status == 0
    assert handler.results["dead"].status == 255
    assert "refused" in (handler.results["dead"].error or "")
    assert result.status == 255


async def test_slow_reader_makes_the_child_block_instead_of_buffering() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell="head -c 200000000 /dev/zero"), window=1 << 20)
            session = next(iter(agent.sessions))
            req = session.requests[proc.request_id]
            for _ in range(500):  # until the agent has used up our window
                if req.credit <= 0:
                    break
                await asyncio.sleep(0.01)
            assert req.credit <= 0
            # the child still has most of its 200 MB to write: it is blocked, not buffered
            assert proc.result is None
            assert sum(len(e.data) for e in proc._events) <= 1 << 20
            assert session.transport.get_write_buffer_size() <= 1 << 20
            total = sum([len(ev.data) async for ev in proc])
            assert total == 200_000_000 and (await proc.wait()).status == 0
        finally:
            await client.close()



async def test_closed_clients_are_freed_without_the_cycle_collector() -> None:
    import gc

    async with running_agents(1) as agents:
        gc.collect()  # what earlier tests left; from here on only reference counting frees
        gc.disable()
        try:
            client = await AgentClient.connect(target_for(agents[0]))
            await client.close()
            del client
            await asyncio.sleep(0)  # let the cancelled keepalive task finish
            await asyncio.sleep(0)
            assert not [o for o in gc.get_objects() if isinstance(o, AgentClient)]
        finally:
            gc.enable()


async def test_a_cancel_while_a_start_is_in_flight_still_reaches_that_command() -> None:
    """Ctrl-C lands between EXEC and the agent's answer: that host's command is cancelled too.

    The handler's on_start runs just before EXEC goes out, so cancelling there is the
    race a user hits by pressing Ctrl-C as a run starts; the command must not be left
    to run its 60 s.
    """
    async with running_agents(2) as agents:
        fleet = Fleet([target_for(a, f"h{i}") for i, a in enumerate(agents)], ConnectOptions(timeout=10))

        class CancelOnStart(Collect):
            def on_start(self, host: str) -> None:
                fleet.cancel(grace=0.2)

        collect = CancelOnStart()
        await asyncio.wait_for(fleet.run(Command(shell="sleep 60"), collect), 20)
    assert {r.outcome for r in collect.results.values()} == {"cancelled"}
