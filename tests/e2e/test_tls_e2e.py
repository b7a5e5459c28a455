"""Mutual TLS between real controllers and agents: alone, with HMAC, and refused.

Certificates come from `shoal certs init` (shoal.controller.pki); a second PKI plays the
stranger whose certificates must not be trusted.
"""

from __future__ import annotations

import re
import select
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shoal.agent.cli import build_parser, config_from_args
from shoal.agent.config import TlsConfig
from shoal.hostio.keyfile import write_key_file
from shoal.hostio.tls import client_context
from shoal.controller.cli.main import main as shoal_main
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.pki import init_pki
from shoal.protocol.errors import ConfigError, ShoalConnectionError
from shoal.protocol.handshake import SharedKey
from tests.agents import AgentThread, make_agents, running_agents, target_for
from tests.rawpeer import DEADLINE, connect
from tests.programs import SHOAL, SHOAL_AGENT



@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("pki"), ["agent.example"])


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("stranger"), [])


def agent_tls(pki: dict[str, Path]) -> TlsConfig:
    return TlsConfig(cert=str(pki["agent_cert"]), key=str(pki["agent_key"]), ca=str(pki["ca_cert"]))


def controller_tls(certs: dict[str, Path], ca: dict[str, Path] | None = None):  # type: ignore[no-untyped-def]
    return client_context(certs["controller_cert"], certs["controller_key"], (ca or certs)["ca_cert"])


async def run_echo(client: AgentClient, text: str) -> bytes:
    proc = await client.exec(Command(argv=["echo", text]))
    out = b"".join([event.data async for event in proc])
    assert (await proc.wait()).status == 0
    return out


async def test_tls_and_hmac_together(pki: dict[str, Path]) -> None:
    key = SharedKey.generate()
    async with running_agents(1, keys=[key], tls=agent_tls(pki)) as (agent,):
        client = await AgentClient.connect(target_for(agent), key=key, ssl=controller_tls(pki))
        try:
            assert client.transport is not None
            assert client.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            assert await run_echo(client, "both") == b"both\n"
            [session] = agent.sessions
            assert session.key_id == key.key_id
        finally:
            await client.close()


async def test_tls_alone_authenticates_and_plain_tcp_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:
    async with running_agents(1, tls=agent_tls(pki)) as (agent,):
        client = await AgentClient.connect(target_for(agent), ssl=controller_tls(pki))
        try:
            assert await run_echo(client, "tls") == b"tls\n"
        finally:
            await client.close()
        with pytest.raises(ShoalConnectionError, match="does it require TLS"):
            await AgentClient.connect(target_for(agent), timeout=DEADLINE)


async def test_controller_refuses_agent_of_another_ca(pki: dict[str, Path], stranger: dict[str, Path]) -> None:
    async with running_agents(1, tls=agent_tls(pki)) as (agent,):
        with pytest.raises(ShoalConnectionError, match="TLS handshake failed: .*--tls-ca"):
            await AgentClient.connect(target_for(agent), ssl=controller_tls(stranger, ca=stranger),
                                      timeout=DEADLINE)


async def test_agent_refuses_controller_of_another_ca_and_runs_nothing(
        pki: dict[str, Path], stranger: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "should-not-exist"
    async with running_agents(1, tls=agent_tls(pki)) as (agent,):
        # The stranger trusts our CA, so only the agent's check can stop it.
        ctx = controller_tls(stranger, ca=pki)
        with pytest.raises(ShoalConnectionError, match="refuse our TLS certificate"):
            client = await AgentClient.connect(target_for(agent), ssl=ctx, timeout=DEADLINE)
            await client.exec(Command(argv=["touch", str(target)]))
        assert not agent.sessions
    assert not target.exists()


async def test_controller_checks_the_agent_name(pki: dict[str, Path]) -> None:
    """127.0.0.2 is loopback but not in the agent's certificate: a right CA is not enough."""
    async with running_agents(1, tls=agent_tls(pki), listen=("127.0.0.2:0",)) as (agent,):
        with pytest.raises(ShoalConnectionError, match="TLS handshake failed: .*mismatch"):
            await AgentClient.connect(target_for(agent), ssl=controller_tls(pki), timeout=DEADLINE)


def test_silent_tls_connection_is_dropped_at_the_deadline(pki: dict[str, Path],
                                                          start_agents: Callable[..., AgentThread]) -> None:
    t = start_agents(tls=agent_tls(pki), **{"limits.handshake_timeout": 1.0})
    sock = connect(t.addresses[0])
    try:
        closed = False
        readable, _, _ = select.select([sock], [], [], DEADLINE)
        if readable:
            try:
                closed = sock.recv(4096) == b""
            except ConnectionResetError:
                closed = True
        assert closed, "agent kept a socket that never started TLS"
    finally:
        sock.close()


def test_only_a_key_or_insecure_unlocks_listening_beyond_loopback(pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="without a key"):
        make_agents(listen=("0.0.0.0:0",))
    with pytest.raises(ConfigError, match="without a key"):
        make_agents(listen=("0.0.0.0:0",), tls=agent_tls(pki))
    make_agents(listen=("0.0.0.0:0",), tls=agent_tls(pki), insecure=True)  # constructed only, never bound


def test_agent_tls_options_are_made_absolute_and_go_together(
        pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pki["ca_cert"].parent)
    args = build_parser().parse_args(["--tls-cert", "agent.pem", "--tls-key", "agent.key", "--tls-ca", "ca.pem"])
    assert config_from_args(args).tls == agent_tls(pki)
    with pytest.raises(ConfigError, match="go together"):
        config_from_args(build_parser().parse_args(["--tls-cert", "agent.pem"]))


def test_certs_init_reports_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    assert shoal_main(["certs", "init", str(directory), "--agent-name", "web1,10.0.0.7"]) == 0
    out, err = capsys.readouterr()
    written = out.splitlines()
    assert sorted(Path(p).name for p in written) == sorted(
        ["ca.pem", "ca.key", "agent.pem", "agent.key", "controller.pem", "controller.key"])
    assert all(Path(p).exists() for p in written)
    assert f"--tls-cert {directory / 'agent.pem'}" in err and f"--tls-ca {directory / 'ca.pem'}" in err
    assert shoal_main(["certs", "init", str(directory)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


# -- the installed commands --------------------------------------------------------


@pytest.fixture
def tls_agent_process(pki: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`shoal-agent` with TLS and a key, on a port it picks; yields (address, key file)."""
    key_path = tmp_path / "k"
    write_key_file(key_path)
    proc = subprocess.Popen(
        [*SHOAL_AGENT, "--listen", "127.0.0.1:0", "--key-file", str(key_path),
         "--tls-cert", str(pki["agent_cert"]), "--tls-key", str(pki["agent_key"]),
         "--tls-ca", str(pki["ca_cert"]), "--state-dir", str(tmp_path), "--log-level", "info"],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        address = None
        while address is None:
            line = proc.stderr.readline()
            assert line, "shoal-agent exited before listening"
            match = re.search(r"listening on (\S+)", line)
            address = match.group(1) if match else None
        yield address, key_path
    finally:
        proc.terminate()
        proc.communicate(timeout=DEADLINE)


def test_real_commands_run_over_tls_and_hmac(pki: dict[str, Path], tls_agent_process: tuple[str, Path]) -> None:
    address, key_path = tls_agent_process
    tls = ["--tls-cert", str(pki["controller_cert"]), "--tls-key", str(pki["controller_key"]),
           "--tls-ca", str(pki["ca_cert"])]
    ok = subprocess.run([*SHOAL, "run", "-n", address, "--key-file", str(key_path), *tls,
                         "--", "echo", "secure"], capture_output=True, text=True, timeout=DEADLINE)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "secure\n", "")
    plain = subprocess.run([*SHOAL, "run", "-n", address, "--key-file", str(key_path),
                            "--", "echo", "secure"], capture_output=True, text=True, timeout=DEADLINE)
    assert plain.returncode == 255 and "does it require TLS" in plain.stderr
