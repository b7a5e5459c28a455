"""Reloading the agent (SIGHUP) starts, stops and moves its discovery responder, all or nothing.

Each test gives its agent its own 127.0.0.x address, so ports picked free there
stay ours. "Nothing answers" is proven, not waited for: a probe from a connected
socket to a port nobody holds comes back as ECONNREFUSED (ICMP port unreachable).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from shoal.agent.config import AgentConfig, KeyPolicy
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.discovery import decode_reply, encode_probe
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey, new_nonce
from tests.agents import config, running_agents
from tests.e2e.test_discovery import KEY, OTHER, _free_udp_port, discovery
from tests.waiting import wait_for
from tests.programs import SHOAL_AGENT

ROOT = Path(__file__).resolve().parents[2]


def _discovery(host: str, port: int, enabled: bool = True, name: str = "n1") -> dict[str, object]:
    return discovery(host, port, name, enabled)


def _settings(host: str, port: int, enabled: bool = True, name: str = "n1") -> AgentConfig:
    """The same as a whole configuration, to reload an agent with."""
    return config(**_discovery(host, port, enabled, name))


async def _probe(dest: tuple[str, int], key: SharedKey | None = KEY) -> bytes | None:
    """The reply to one probe, or None when nothing listens at `dest` (ECONNREFUSED)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in dest[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(dest)
        nonce = new_nonce()
        await loop.sock_sendall(sock, encode_probe(nonce, key))
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 10)
        except ConnectionRefusedError:
            return None
    assert decode_reply(data).nonce == nonce
    return data


async def _name_at(dest: tuple[str, int], key: SharedKey | None = KEY) -> str | None:
    data = await _probe(dest, key)
    return None if data is None else decode_reply(data).name


async def test_reload_starts_moves_renames_and_stops_the_responder() -> None:
    host = "127.0.0.41"
    first, second = _free_udp_port(host), _free_udp_port(host)
    async with running_agents(keys=[KEY], **_discovery(host, first, enabled=False)) as (agent,):
        assert await _name_at((host, first)) is None
        agent.reload(_settings(host, first), [KEY])
        assert await _name_at((host, first)) == "n1"
        agent.reload(_settings(host, second), [KEY])
        assert await _name_at((host, second)) == "n1"
        assert await _name_at((host, first)) is None
        agent.reload(_settings(host, second, name="n2"), [KEY])  # same socket, new name
        assert await _name_at((host, second)) == "n2"
        agent.reload(_settings(host, second, enabled=False), [KEY])
        assert await _name_at((host, second)) is None
        assert agent.discovery is None


async def test_reload_answers_with_the_new_key_only() -> None:
    host = "127.0.0.42"
    port = _free_udp_port(host)
    async with running_agents(keys=[KEY], **_discovery(host, port)) as (agent,):
        assert await _name_at((host, port), KEY) == "n1"
        agent.reload(_settings(host, port), [OTHER])
        assert await _name_at((host, port), OTHER) == "n1"
        # A probe under the dropped key gets nothing: the next reply is to the OTHER probe.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.sendto(encode_probe(new_nonce(), KEY), (host, port))
            nonce = new_nonce()
            sock.sendto(encode_probe(nonce, OTHER), (host, port))
            reply = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)
        assert decode_reply(reply).nonce == nonce


async def test_rebind_that_fails_refuses_the_reload_and_the_old_responder_answers() -> None:
    host = "127.0.0.43"
    port = _free_udp_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((host, 0))
        taken = squatter.getsockname()[1]
        async with running_agents(keys=[KEY], **_discovery(host, port)) as (agent,):
            before = agent.config
            with pytest.raises(ConfigError) as info:
                agent.reload(_settings(host, taken, name="moved"), [OTHER])
            assert str(info.value) == (f"discovery.port: cannot answer discovery on {host}:{taken}/udp: "
                                       "Address already in use")
            assert agent.config is before
            assert await _name_at((host, port), KEY) == "n1"  # old socket, old name, old key


async def test_reload_failing_after_the_bind_releases_the_new_socket(tmp_path: Path) -> None:
    host = "127.0.0.44"
    port, moved = _free_udp_port(host), _free_udp_port(host)
    async with running_agents(keys=[KEY], **_discovery(host, port)) as (agent,):
        missing = KeyPolicy("gone", str(tmp_path / "missing.key"), allow_all=True)
        bad = _settings(host, moved).replace_from_cli(keys=(missing,))
        with pytest.raises(ConfigError):
            agent.reload(bad, [KEY])
        assert await _name_at((host, moved)) is None
        assert await _name_at((host, port)) == "n1"


# -- SIGHUP to a real shoal-agent ------------------------------------------------------

def _write_config(path: Path, host: str, port: int, key_file: Path) -> None:
    path.write_text(f'listen = ["{host}:0"]\nstate_dir = "{path.parent / "state"}"\n'
                    f'[discovery]\nenabled = true\nport = {port}\nname = "hup"\n'
                    f'[[keys]]\nname = "k"\nfile = "{key_file}"\nallow = "all"\n')


def _answers(dest: tuple[str, int], key: SharedKey) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.connect(dest)
        sock.send(encode_probe(new_nonce(), key))
        try:
            return bool(sock.recv(2048))
        except ConnectionRefusedError:
            return False


def test_sighup_moves_the_responder_and_refuses_a_port_it_cannot_bind(tmp_path: Path) -> None:
    host = "127.0.0.45"
    first, second = _free_udp_port(host), _free_udp_port(host)
    key_file = tmp_path / "k.key"
    key = write_key_file(key_file)
    (tmp_path / "state").mkdir()
    cfg, log_path = tmp_path / "agent.toml", tmp_path / "agent.log"
    _write_config(cfg, host, first, key_file)
    with open(log_path, "wb") as log, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((host, 0))
        taken = squatter.getsockname()[1]
        proc = subprocess.Popen([*SHOAL_AGENT, "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: _answers((host, first), key), timeout=20, what="the agent to answer")
            _write_config(cfg, host, second, key_file)
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: _answers((host, second), key), timeout=20, what="the responder to move")
            assert not _answers((host, first), key)
            _write_config(cfg, host, taken, key_file)
            os.kill(proc.pid, signal.SIGHUP)
            wait_for(lambda: b"reload failed" in log_path.read_bytes(), timeout=20, what="the refused reload")
            assert _answers((host, second), key)
            assert proc.poll() is None
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
    refused = [line for line in log_path.read_text().splitlines() if "reload failed" in line]
    assert len(refused) == 1 and refused[0].endswith(
        f"reload failed, keeping the old configuration: discovery.port: cannot answer discovery on "
        f"{host}:{taken}/udp: Address already in use")
