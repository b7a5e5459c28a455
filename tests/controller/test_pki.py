"""The private CA: files, modes, names and roles a TLS peer will check."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.controller.pki import PKI_FILES, init_pki
from shoal.protocol.errors import ConfigError


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki") / "new"
    return init_pki(directory, ["node1.example", "10.0.0.5", "[fd00::7]", "Node2.Example."], days=30)


def test_all_files_written_where_reported(pki: dict[str, Path]) -> None:
    assert set(pki) == set(PKI_FILES)
    directory = pki["ca_cert"].parent
    assert sorted(p.name for p in directory.iterdir()) == sorted(PKI_FILES.values())
    assert {key: path.name for key, path in pki.items()} == PKI_FILES


def test_private_keys_are_owner_only(pki: dict[str, Path]) -> None:
    for name in ("ca_key", "agent_key", "controller_key"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o600, name
    for name in ("ca_cert", "agent_cert", "controller_cert"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o644, name
    assert stat.S_IMODE(pki["ca_cert"].parent.stat().st_mode) == 0o700


def test_keys_are_p256_and_match_their_certificates(pki: dict[str, Path]) -> None:
    for role in ("ca", "agent", "controller"):
        key = serialization.load_pem_private_key(pki[f"{role}_key"].read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert load(pki[f"{role}_cert"]).public_key() == key.public_key()


def test_agent_certificate_names_every_way_to_reach_the_agent(pki: dict[str, Path]) -> None:
    dns, ips = sans(load(pki["agent_cert"]))
    assert dns == {"node1.example", "node2.example", "localhost"}
    assert ips == {"10.0.0.5", "fd00::7", "127.0.0.1", "::1"}


def test_roles_are_separate(pki: dict[str, Path]) -> None:
    assert eku(load(pki["agent_cert"])) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert eku(load(pki["controller_cert"])) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    controller = load(pki["controller_cert"])
    assert controller.subject.rfc4514_string().startswith("CN=shoal-controller")
    for name in ("agent_cert", "controller_cert"):
        assert not load(pki[name]).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ca_signs_both_leaves(pki: dict[str, Path]) -> None:
    ca = load(pki["ca_cert"])
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    ca.verify_directly_issued_by(ca)
    load(pki["agent_cert"]).verify_directly_issued_by(ca)
    load(pki["controller_cert"]).verify_directly_issued_by(ca)


def test_validity_follows_days(pki: dict[str, Path]) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    for name in ("ca_cert", "agent_cert", "controller_cert"):
        cert = load(pki[name])
        assert cert.not_valid_before_utc <= now
        left = cert.not_valid_after_utc - now
        assert datetime.timedelta(days=29) < left <= datetime.timedelta(days=30)


def test_existing_ca_is_never_overwritten(pki: dict[str, Path]) -> None:
    before = {name: path.read_bytes() for name, path in pki.items()}
    with pytest.raises(ConfigError, match="a CA already exists"):
        init_pki(pki["ca_cert"].parent, ["other.example"])
    assert {name: path.read_bytes() for name, path in pki.items()} == before


def test_any_existing_target_blocks_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "agent.key").write_bytes(b"someone's key")
    with pytest.raises(ConfigError, match="agent.key"):
        init_pki(tmp_path, [])
    assert [p.name for p in tmp_path.iterdir()] == ["agent.key"]


def test_two_pkis_have_distinct_cas(tmp_path: Path) -> None:
    a = load(init_pki(tmp_path / "a", [])["ca_cert"])
    b = load(init_pki(tmp_path / "b", [])["ca_cert"])
    assert a.subject != b.subject
    with pytest.raises(ValueError):  # issued by another CA
        load(init_pki(tmp_path / "c", [])["agent_cert"]).verify_directly_issued_by(a)


def test_defaults_alone_cover_loopback(tmp_path: Path) -> None:
    dns, ips = sans(load(init_pki(tmp_path, [])["agent_cert"]))
    assert dns == {"localhost"} and ips == {"127.0.0.1", "::1"}
    assert all(ipaddress.ip_address(ip).is_loopback for ip in ips)


@pytest.mark.parametrize("name", ["", "bad name", "a/b", "user@host", "nœud.example", "a..b"])
def test_unusable_names_are_config_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a host name"):
        init_pki(tmp_path, [name])
    assert list(tmp_path.iterdir()) == []


def test_bad_days_and_controller_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1 day"):
        init_pki(tmp_path, [], days=0)
    with pytest.raises(ConfigError, match="1 to 64"):
        init_pki(tmp_path, [], controller_name="x" * 65)
