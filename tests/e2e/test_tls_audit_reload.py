"""Failed TLS handshakes reach the audit log; SIGHUP's reload renews the agent's certificate.

Certificates come from `shoal certs init` (shoal.controller.pki); a renewal is a new agent
certificate from the same CA, issued with pki's own leaf-certificate code, as an
admin renewing before expiry would. Clients are real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.agent.config import TlsConfig
from shoal.hostio.tls import client_context
from shoal.controller import pki as pki_module
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.protocol.connection import Connection, Role
from shoal.protocol.errors import ConfigError
from tests.agents import make_agents, running_agents, target_for
from tests.waiting import wait_for_async

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pki_module.init_pki(tmp_path_factory.mktemp("pki"), [])


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pki_module.init_pki(tmp_path_factory.mktemp("stranger"), [])


@pytest.fixture
def shoal_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """Capture the agent's log even when an in-process CLI run cut it off from the root logger."""
    monkeypatch.setattr(logging.getLogger("shoal"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="shoal")
    return caplog


def agent_tls(certs: dict[str, Path]) -> TlsConfig:
    return TlsConfig(cert=str(certs["agent_cert"]), key=str(certs["agent_key"]), ca=str(certs["ca_cert"]))


def controller_tls(certs: dict[str, Path], ca: dict[str, Path]) -> ssl.SSLContext:
    return client_context(certs["controller_cert"], certs["controller_key"], ca["ca_cert"])


def audit_events(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == event]


def peer_of(writer: asyncio.StreamWriter) -> str:
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


async def until_closed(reader: asyncio.StreamReader) -> None:
    """Read until the agent hangs up (a reset counts): it refused us."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass


# -- the refused clients: each returns its own address as the agent names it ----


async def stranger_client(host: str, port: int, ours: dict[str, Path], strange: dict[str, Path]) -> str:
    """Trusts our CA but presents a certificate of another: only the agent's check stops it."""
    reader, writer = await asyncio.open_connection(host, port, ssl=controller_tls(strange, ours),
                                                   server_hostname=host)
    peer = peer_of(writer)
    writer.write(b"\0" * 16)
    await until_closed(reader)
    writer.close()
    return peer


async def certless_client(host: str, port: int, ours: dict[str, Path], strange: dict[str, Path]) -> str:
    """Verifies the agent properly but has no certificate of its own."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ours["ca_cert"]))
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    peer = peer_of(writer)
    await until_closed(reader)
    writer.close()
    return peer


async def plain_shoal_client(host: str, port: int, ours: dict[str, Path], strange: dict[str, Path]) -> str:
    """A controller without TLS: its HELLO frame is what the agent's TLS layer reads."""
    conn = Connection(Role.CONTROLLER)
    conn.start()
    return await _send_raw(host, port, b"".join(conn.data_to_send()))


async def garbage_client(host: str, port: int, ours: dict[str, Path], strange: dict[str, Path]) -> str:
    return await _send_raw(host, port, b"\xff" * 64)


async def _send_raw(host: str, port: int, data: bytes) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    peer = peer_of(writer)
    writer.write(data)
    await until_closed(reader)
    writer.close()
    return peer


@pytest.mark.parametrize("client, reason", [
    (stranger_client, "certificate verify failed"),
    (certless_client, "peer did not return a certificate"),
    (plain_shoal_client, "wrong version number"),
    (garbage_client, "wrong version number"),
])
async def test_a_failed_handshake_is_audited_once_with_the_peer(
        client: Any, reason: str, pki: dict[str, Path], stranger: dict[str, Path], tmp_path: Path,
        shoal_logs: pytest.LogCaptureFixture) -> None:
    audit = tmp_path / "audit.log"
    async with running_agents(1, tls=agent_tls(pki), audit_log=str(audit)) as (agent,):
        target = target_for(agent)
        assert target.host is not None
        peer = await client(target.host, target.port, pki, stranger)
        await wait_for_async(lambda: audit_events(audit, "refused"), timeout=10)
        # A good controller afterwards: the agent still serves, and anything the
        # failure might still have produced has had its turn.
        good = await AgentClient.connect(target, ssl=controller_tls(pki, pki), timeout=10)
        await good.ping()
        await good.close()
    [record] = audit_events(audit, "refused")
    assert record["peer"] == peer
    assert record["reason"].startswith("TLS handshake failed: ") and reason in record["reason"]
    assert not any(r["peer"] == peer for r in audit_events(audit, "accepted"))
    lines = [r for r in shoal_logs.records if "TLS handshake failed" in r.getMessage()]
    assert [(r.levelno, peer in r.getMessage()) for r in lines] == [(logging.WARNING, True)]
    assert "PRIVATE KEY" not in shoal_logs.text and "PRIVATE KEY" not in audit.read_text()


async def test_a_silent_client_is_refused_at_the_handshake_deadline(pki: dict[str, Path], tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    async with running_agents(1, tls=agent_tls(pki), audit_log=str(audit),
                              **{"limits.handshake_timeout": 0.5}) as (agent,):
        target = target_for(agent)
        reader, writer = await asyncio.open_connection(target.host, target.port)
        await asyncio.wait_for(until_closed(reader), timeout=10)
        writer.close()
    [record] = audit_events(audit, "refused")
    assert record == {**record, "peer": peer_of(writer), "reason": "TLS handshake failed: no handshake within 0.5s"}


async def test_handshakes_in_flight_are_capped(pki: dict[str, Path], tmp_path: Path) -> None:
    """Over the cap a new connection is closed at once; the ones in flight are unaffected."""
    audit = tmp_path / "audit.log"
    async with running_agents(1, tls=agent_tls(pki), audit_log=str(audit),
                              **{"limits.max_connections": 2, "limits.handshake_timeout": 60}) as (agent,):
        target = target_for(agent)
        silent = [await asyncio.open_connection(target.host, target.port) for _ in range(2)]
        reader, writer = await asyncio.open_connection(target.host, target.port)
        await asyncio.wait_for(until_closed(reader), timeout=10)
        writer.close()
        [record] = audit_events(audit, "refused")
        assert record["peer"] == peer_of(writer) and "too many TLS handshakes in progress" in record["reason"]
        for _, w in silent:
            w.close()
        await wait_for_async(lambda: len(audit_events(audit, "refused")) == 3, timeout=10)
        # Both slots are free again: a real controller gets in.
        good = await AgentClient.connect(target, ssl=controller_tls(pki, pki), timeout=10)
        await good.ping()
        await good.close()
    reasons = sorted(r["reason"] for r in audit_events(audit, "refused"))
    assert reasons[:2] == ["TLS handshake failed: connection closed by the peer"] * 2


# -- reload ---------------------------------------------------------------------------


def renew_agent_certificate(certs: dict[str, Path]) -> int:
    """Issue a new agent certificate and key from the same CA, replace the files; the serial."""
    ca_key = serialization.load_pem_private_key(certs["ca_key"].read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(certs["ca_cert"].read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki_module._leaf(ca_cert, ca_key, key, "shoal-agent", datetime.datetime.now(datetime.timezone.utc), 30,
                            ExtendedKeyUsageOID.SERVER_AUTH, pki_module.agent_sans(pki_module.DEFAULT_AGENT_NAMES))
    replace(certs["agent_key"], pki_module._key_pem(key))
    replace(certs["agent_cert"], pki_module._cert_pem(cert))
    return cert.serial_number


def replace(path: Path, data: bytes) -> None:
    """Swap a file's contents in one rename, as an admin deploying renewed files would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def served_serial(client: AgentClient) -> int:
    assert client.transport is not None
    der = client.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def echo(client: AgentClient, text: str) -> bytes:
    proc = await client.exec(Command(argv=["echo", text]))
    out = b"".join([event.data async for event in proc])
    assert (await proc.wait()).status == 0
    return out


async def test_reload_serves_a_renewed_certificate_to_new_connections_only(tmp_path: Path) -> None:
    certs = pki_module.init_pki(tmp_path / "pki", [])
    old_serial = x509.load_pem_x509_certificate(certs["agent_cert"].read_bytes()).serial_number
    ctx = controller_tls(certs, certs)
    async with running_agents(1, tls=agent_tls(certs)) as (agent,):
        target = target_for(agent)
        before = await AgentClient.connect(target, ssl=ctx, timeout=10)
        try:
            assert served_serial(before) == old_serial
            new_serial = renew_agent_certificate(certs)
            assert new_serial != old_serial
            agent.reload(agent.config, [])
            after = await AgentClient.connect(target, ssl=ctx, timeout=10)
            try:
                assert served_serial(after) == new_serial
                assert await echo(after, "new") == b"new\n"
            finally:
                await after.close()
            assert await echo(before, "still here") == b"still here\n"
            assert served_serial(before) == old_serial
        finally:
            await before.close()


@pytest.mark.parametrize("broken", ["agent_cert", "agent_key", "ca_cert"])
async def test_a_reload_with_a_bad_tls_file_is_refused_and_the_old_certificate_stays(
        broken: str, tmp_path: Path) -> None:
    certs = pki_module.init_pki(tmp_path / "pki", [])
    old_serial = x509.load_pem_x509_certificate(certs["agent_cert"].read_bytes()).serial_number
    ctx = controller_tls(certs, certs)
    async with running_agents(1, tls=agent_tls(certs)) as (agent,):
        old_config = agent.config
        replace(certs[broken], b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
        new = old_config.replace_from_cli(**{"limits.max_connections": 7})
        with pytest.raises(ConfigError) as refused:
            agent.reload(new, [])
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"{certs[broken]}: ")
        assert agent.config is old_config
        client = await AgentClient.connect(target_for(agent), ssl=ctx, timeout=10)
        try:
            assert served_serial(client) == old_serial
            assert await echo(client, "old") == b"old\n"
        finally:
            await client.close()


async def test_reload_cannot_turn_tls_off(tmp_path: Path) -> None:
    certs = pki_module.init_pki(tmp_path / "pki", [])
    async with running_agents(1, tls=agent_tls(certs)) as (agent,):
        old_config = agent.config
        with pytest.raises(ConfigError, match="tls: turning TLS on or off takes a restart"):
            agent.reload(old_config.replace_from_cli(tls=None), [])
        assert agent.config is old_config


def test_a_reload_before_start_checks_the_tls_files(tmp_path: Path) -> None:
    certs = pki_module.init_pki(tmp_path / "pki", [])
    [agent] = make_agents(tls=agent_tls(certs))  # never started
    missing = TlsConfig(cert=str(tmp_path / "gone.pem"), key=str(certs["agent_key"]), ca=str(certs["ca_cert"]))
    with pytest.raises(ConfigError, match="gone.pem: no such certificate file"):
        agent.reload(agent.config.replace_from_cli(tls=missing), [])
