"""One test body over every transport the agent listens on: TCP/IPv4, TCP/IPv6, Unix socket."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from tests.agents import running_agents, target_for


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


TRANSPORTS = ["127.0.0.1:0", "[::1]:0", "unix"]


@pytest.mark.parametrize("listen", TRANSPORTS)
async def test_command_with_stdin_and_exit_status_over(listen: str, tmp_path: Path) -> None:
    if listen.startswith("[::1]") and not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1 cannot be bound)")
    address = f"unix:{tmp_path / 'agent.sock'}" if listen == "unix" else listen
    data = os.urandom(2_000_000)
    async with running_agents(listen=(address,)) as (agent,):
        target = target_for(agent)
        assert (target.path is not None) == (listen == "unix")
        client = await AgentClient.connect(target, timeout=5)
        try:
            proc = await client.exec(Command(shell="sha256sum; echo err >&2; exit 7", stdin=True))
            await proc.write(data)
            proc.close_stdin()
            out, err = bytearray(), bytearray()
            async for ev in proc:
                (out if ev.stream == "stdout" else err).extend(ev.data)
            result = await proc.wait()
        finally:
            await client.close()
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert err == b"err\n" and result.status == 7


async def test_unix_socket_is_private_without_a_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    async with running_agents(listen=(f"unix:{path}",)):
        assert path.stat().st_mode & 0o777 == 0o600
    assert not path.exists()  # removed on close
