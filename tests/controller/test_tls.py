"""Mutual TLS with the shoal CA: real handshakes over loopback, and bad files named."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from shoal.hostio.tls import client_context, server_context
from shoal.controller.pki import init_pki
from shoal.protocol.errors import ConfigError

PAYLOAD = b"hello from the agent"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("pki") / "ours", ["node1.example", "10.0.0.5"], days=2)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Another installation's PKI: same names, different CA."""
    return init_pki(tmp_path_factory.mktemp("pki") / "theirs", ["node1.example", "10.0.0.5"], days=2)


def agent_ctx(p: dict[str, Path], ca: dict[str, Path] | None = None) -> ssl.SSLContext:
    return server_context(p["agent_cert"], p["agent_key"], (ca or p)["ca_cert"])


def controller_ctx(p: dict[str, Path], ca: dict[str, Path] | None = None) -> ssl.SSLContext:
    return client_context(p["controller_cert"], p["controller_key"], (ca or p)["ca_cert"])


@dataclass
class Outcome:
    """What each end saw: the error it raised, or what it learnt of its peer."""

    error: BaseException | None = None
    received: bytes = b""
    version: str | None = None
    peer_cn: str | None = None


def common_name(tls: ssl.SSLSocket) -> str | None:
    """The subject CN of the peer's certificate, parsed independently of ssl."""
    der = tls.getpeercert(binary_form=True)
    if der is None:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def socket_pair(transport: str) -> tuple[socket.socket, socket.socket]:
    if transport == "socketpair":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def run_agent_end(ctx: ssl.SSLContext, sock: socket.socket, out: Outcome) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            out.peer_cn = common_name(tls)
            out.version = tls.version()
            tls.sendall(PAYLOAD)
    except (ssl.SSLError, OSError) as exc:
        out.error = exc


def run_controller_end(ctx: ssl.SSLContext, sock: socket.socket, hostname: str, out: Outcome) -> None:
    try:
        with ctx.wrap_socket(sock, server_hostname=hostname) as tls:
            out.peer_cn = common_name(tls)
            out.version = tls.version()
            while chunk := tls.recv(1024):
                out.received += chunk
    except (ssl.SSLError, OSError) as exc:
        out.error = exc


def handshake(agent: ssl.SSLContext, controller: ssl.SSLContext, hostname: str = "localhost",
              transport: str = "socketpair") -> tuple[Outcome, Outcome]:
    """Run both ends of one connection to completion; return (agent, controller)."""
    server_sock, client_sock = socket_pair(transport)
    for sock in (server_sock, client_sock):
        sock.settimeout(10)  # a bug must fail the test, not hang it
    a, c = Outcome(), Outcome()
    thread = threading.Thread(target=run_agent_end, args=(agent, server_sock, a))
    thread.start()
    try:
        run_controller_end(controller, client_sock, hostname, c)
    finally:
        thread.join()
        server_sock.close()
        client_sock.close()
    return a, c


@pytest.mark.parametrize("transport", ["socketpair", "tcp"])
def test_mutual_tls_handshake_succeeds(pki: dict[str, Path], transport: str) -> None:
    a, c = handshake(agent_ctx(pki), controller_ctx(pki), transport=transport)
    assert a.error is None and c.error is None
    assert c.received == PAYLOAD
    assert a.version == c.version == "TLSv1.3"
    # Each side saw the other's certificate.
    assert (a.peer_cn, c.peer_cn) == ("shoal-controller", "shoal-agent")


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", "node1.example", "10.0.0.5"])
def test_every_name_in_the_certificate_verifies(pki: dict[str, Path], hostname: str) -> None:
    a, c = handshake(agent_ctx(pki), controller_ctx(pki), hostname)
    assert c.error is None and c.received == PAYLOAD


@pytest.mark.parametrize("hostname", ["node2.example", "10.0.0.6"])
def test_name_not_in_the_certificate_is_refused(pki: dict[str, Path], hostname: str) -> None:
    _, c = handshake(agent_ctx(pki), controller_ctx(pki), hostname)
    assert isinstance(c.error, ssl.SSLCertVerificationError)
    assert c.received == b""


def test_agent_refuses_controller_from_another_ca(pki: dict[str, Path], foreign: dict[str, Path]) -> None:
    # The foreign controller trusts our CA, so only the agent's check can stop it.
    a, c = handshake(agent_ctx(pki), controller_ctx(foreign, ca=pki))
    assert isinstance(a.error, ssl.SSLError)
    assert "certificate verify failed" in str(a.error)
    assert c.received == b""


def test_controller_refuses_agent_from_another_ca(pki: dict[str, Path], foreign: dict[str, Path]) -> None:
    _, c = handshake(agent_ctx(foreign, ca=pki), controller_ctx(pki))
    assert isinstance(c.error, ssl.SSLCertVerificationError)
    assert c.received == b""


def test_agent_certificate_cannot_act_as_controller(pki: dict[str, Path]) -> None:
    """A stolen agent key must not let its holder drive other agents."""
    impostor = client_context(pki["agent_cert"], pki["agent_key"], pki["ca_cert"])
    a, c = handshake(agent_ctx(pki), impostor)
    assert isinstance(a.error, ssl.SSLError)
    assert c.received == b""


def test_controller_without_certificate_is_refused(pki: dict[str, Path]) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(pki["ca_cert"])
    a, c = handshake(agent_ctx(pki), bare)
    assert isinstance(a.error, ssl.SSLError)
    assert c.received == b""


def test_tls_1_2_is_refused(pki: dict[str, Path]) -> None:
    old = controller_ctx(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    a, c = handshake(agent_ctx(pki), old)
    assert isinstance(a.error, ssl.SSLError) and isinstance(c.error, ssl.SSLError)


def test_contexts_demand_what_they_should(pki: dict[str, Path]) -> None:
    server, client = agent_ctx(pki), controller_ctx(pki)
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_3
    # Only our CA is trusted, never the system store.
    assert len(client.get_ca_certs()) == 1 and len(server.get_ca_certs()) == 1


# -- bad files --------------------------------------------------------------


@pytest.fixture
def files(pki: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A private copy of the PKI, free to break."""
    copy = {name: tmp_path / path.name for name, path in pki.items()}
    for name, path in pki.items():
        shutil.copy(path, copy[name])
    yield copy


@pytest.mark.parametrize("which", ["agent_cert", "agent_key", "ca_cert"])
def test_missing_file_is_named(files: dict[str, Path], which: str) -> None:
    files[which].unlink()
    with pytest.raises(ConfigError, match="no such") as info:
        agent_ctx(files)
    assert info.value.where == str(files[which])


@pytest.mark.parametrize("which, complaint", [
    ("agent_cert", "not a PEM certificate"),
    ("agent_key", "not a PEM private key"),
    ("ca_cert", "not a PEM CA certificate"),
])
def test_garbage_file_is_named(files: dict[str, Path], which: str, complaint: str) -> None:
    files[which].write_bytes(b"this is not PEM\n")
    with pytest.raises(ConfigError, match=complaint) as info:
        agent_ctx(files)
    assert info.value.where == str(files[which])


def test_certificate_given_as_key_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    as_key = tmp_path / "cert-as-key.pem"
    as_key.write_bytes(files["agent_cert"].read_bytes())
    as_key.chmod(0o600)
    with pytest.raises(ConfigError, match="not a PEM private key") as info:
        server_context(files["agent_cert"], as_key, files["ca_cert"])
    assert info.value.where == str(as_key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_private_key_others_can_read_is_refused_on_both_ends(files: dict[str, Path], mode: int) -> None:
    """Like a shared key file, a TLS private key must be the owner's alone."""
    for cert, key, make in ((files["agent_cert"], files["agent_key"], server_context),
                            (files["controller_cert"], files["controller_key"], client_context)):
        key.chmod(mode)
        try:
            with pytest.raises(ConfigError, match=f"accessible by others \\(mode 0{mode:o}\\)") as info:
                make(cert, key, files["ca_cert"])
            assert info.value.where == str(key)
        finally:
            key.chmod(0o600)


def test_key_of_another_certificate_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="does not match") as info:
        server_context(files["agent_cert"], files["controller_key"], files["ca_cert"])
    assert info.value.where == str(files["agent_cert"])
    assert str(files["controller_key"]) in str(info.value)


def test_encrypted_key_is_refused(files: dict[str, Path]) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(files["agent_key"].read_bytes(), password=None)
    files["agent_key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(ConfigError, match="encrypted"):
        agent_ctx(files)
