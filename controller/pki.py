"""A private CA for optional mutual TLS between the controller and its agents.

`init_pki` makes everything a small fleet needs in one directory: a CA, one agent
certificate (shared by the agents, with every name they are reached by) and one
controller client certificate. Both ends trust only this CA, so a certificate from
any public CA, or from another shoal installation, is refused. `shoal bootstrap
--tls-ca-dir` instead gives each host a certificate of its own (`load_ca`,
`issue_agent_certificate`), so one host's key opens no other host's name.

Keys are EC P-256: small, fast, and supported by every OpenSSL that speaks
TLS 1.3. Private keys are written 0600 and nothing existing is ever overwritten,
since replacing a CA silently cuts off every agent that trusts the old one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.protocol.errors import ConfigError

__all__ = ["PKI_FILES", "DEFAULT_AGENT_NAMES", "CertificateAuthority", "init_pki", "issue_agent_certificate",
           "load_ca"]

# What init_pki writes, by the key it returns them under.
PKI_FILES = {
    "ca_cert": "ca.pem",
    "ca_key": "ca.key",
    "agent_cert": "agent.pem",
    "agent_key": "agent.key",
    "controller_cert": "controller.pem",
    "controller_key": "controller.key",
}
# Always in the agent certificate, so agents on the controller's own host (and
# tests) verify without extra configuration.
DEFAULT_AGENT_NAMES = ("localhost", "127.0.0.1", "::1")
# Certificates become valid a little in the past, so a controller whose clock is
# slightly behind the CA's does not reject a certificate issued a moment ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
# Characters of an ASCII host name, plus "*" for a wildcard label.
_DNS_CHARS = frozenset(string.ascii_lowercase + string.digits + "-._*")


def init_pki(directory: str | os.PathLike[str], agent_names: list[str],
             controller_name: str = "shoal-controller", days: int = 825) -> dict[str, Path]:
    """Create a CA, an agent server certificate and a controller client certificate.

    Args:
        directory: where to write; created (mode 0700) when missing.
        agent_names: host names and IP addresses the agents are reached by; IP
            addresses become IP SANs, the rest DNS SANs. localhost, 127.0.0.1
            and ::1 are always added.
        controller_name: common name of the controller's client certificate.
        days: validity of every certificate.

    Returns:
        The written paths, keyed as in `PKI_FILES`.

    Raises:
        ConfigError: a file would be overwritten (a CA already exists there), a
            name is not usable in a certificate, or the directory is not writable.
    """
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, not {days}", "days")
    if not 1 <= len(controller_name) <= 64:
        raise ConfigError("the controller name must be 1 to 64 characters (an X.509 common name)",
                          "controller name")
    sans = agent_sans([*agent_names, *DEFAULT_AGENT_NAMES])
    paths = _plan(Path(directory))
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now, days)
    agent_key, controller_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    agent_cert = _leaf(ca_cert, ca_key, agent_key, "shoal-agent", now, days,
                       ExtendedKeyUsageOID.SERVER_AUTH, sans)
    controller_cert = _leaf(ca_cert, ca_key, controller_key, controller_name, now, days,
                            ExtendedKeyUsageOID.CLIENT_AUTH, None)
    _write_all(paths, {
        "ca_key": _key_pem(ca_key), "agent_key": _key_pem(agent_key),
        "controller_key": _key_pem(controller_key), "ca_cert": _cert_pem(ca_cert),
        "agent_cert": _cert_pem(agent_cert), "controller_cert": _cert_pem(controller_cert),
    })
    return paths


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA loaded from a `shoal certs init` directory, to issue more agent certificates.

    The private key stays in this process: only certificates it signs, and keys
    generated for them, are meant to leave the controller.
    """

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    where: Path

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate agents and controllers trust."""
        return _cert_pem(self.cert)


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    """Read ca.pem and ca.key from a `shoal certs init` directory and check they belong together.

    Raises:
        ConfigError: a file is missing or unreadable, is not an EC CA certificate or
            key, the key is not the certificate's, or the CA has expired; it names the file.
    """
    where = Path(directory)
    cert_path, key_path = where / PKI_FILES["ca_cert"], where / PKI_FILES["ca_key"]
    try:
        cert = x509.load_pem_x509_certificate(_read_pem(cert_path))
    except ValueError as exc:
        raise ConfigError("not a PEM certificate", str(cert_path)) from exc
    try:
        key = serialization.load_pem_private_key(_read_pem(key_path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("not an unencrypted PEM private key", str(key_path)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"this key does not belong to {cert_path}", str(key_path))
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.timezone.utc):
        raise ConfigError(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}", str(cert_path))
    return CertificateAuthority(cert, key, where)


def _read_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror} (is it a `shoal certs init` directory?)",
                          str(path)) from exc


def issue_agent_certificate(ca: CertificateAuthority, names: list[str], days: int = 825) -> tuple[bytes, bytes]:
    """Issue one agent's server certificate for exactly `names`, with a fresh key.

    Validity ends with the CA's at the latest: a certificate outliving its issuer
    would fail verification anyway, later and more confusingly.

    Returns:
        (certificate PEM, private key PEM).

    Raises:
        ConfigError: no names, a name not usable in a certificate, or days < 1.
    """
    if days < 1:
        raise ConfigError(f"certificate validity must be at least 1 day, not {days}", "days")
    sans = agent_sans(names)
    if not sans:
        raise ConfigError("an agent certificate needs at least one host name or IP address", "agent names")
    now = datetime.datetime.now(datetime.timezone.utc)
    days = min(days, max(1, (ca.cert.not_valid_after_utc - now).days))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca.cert, ca.key, key, "shoal-agent", now, days, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return _cert_pem(cert), _key_pem(key)


def agent_sans(names: Iterable[str]) -> list[x509.GeneralName]:
    """Turn names into SANs, once each: IP addresses as IP SANs, the rest as DNS names."""
    sans: list[x509.GeneralName] = []
    for raw in names:
        ip = _maybe_ip(raw.strip())
        general = x509.IPAddress(ip) if ip is not None else x509.DNSName(_dns_name(raw))
        if general not in sans:
            sans.append(general)
    return sans


def _maybe_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP address, allowing IPv6 in brackets as in URLs."""
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _dns_name(raw: str) -> str:
    """Normalise a host name, refusing what no TLS client would match against."""
    name = raw.strip().lower().rstrip(".")
    if not name or not set(name) <= _DNS_CHARS or ".." in name:
        raise ConfigError(f"{raw!r} is not a host name or IP address (non-ASCII names: use their "
                          "xn-- form)", "agent names")
    return name


def _plan(directory: Path) -> dict[str, Path]:
    """Make the directory and check that nothing there would be overwritten."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create PKI directory: {exc.strerror}", str(directory)) from exc
    paths = {key: directory / name for key, name in PKI_FILES.items()}
    existing = [p.name for p in paths.values() if p.exists() or p.is_symlink()]
    if existing:
        what = "a CA already exists there" if {"ca.pem", "ca.key"} & set(existing) else "files exist there"
        raise ConfigError(f"{what} ({', '.join(existing)}); refusing to overwrite it", str(directory))
    return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _validity(builder: x509.CertificateBuilder, now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days)))


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int) -> x509.Certificate:
    """Self-sign the CA; a random suffix keeps two installations' CAs apart by name."""
    name = _name(f"shoal CA {secrets.token_hex(4)}")
    builder = _validity(x509.CertificateBuilder(), now, days).subject_name(name).issuer_name(name)
    builder = (builder.public_key(key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_key_usage(cert_sign=True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(key, hashes.SHA256())


def _leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey,
          common_name: str, now: datetime.datetime, days: int, usage: x509.ObjectIdentifier,
          sans: list[x509.GeneralName] | None) -> x509.Certificate:
    """Issue an end-entity certificate good for exactly one TLS role."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = _validity(x509.CertificateBuilder(), now, days)
    builder = (builder.subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(cert_sign=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_all(paths: dict[str, Path], contents: dict[str, bytes]) -> None:
    """Write every file or none: a half-written PKI would block the next attempt."""
    written: list[Path] = []
    try:
        for name, data in contents.items():
            _write(paths[name], data, 0o600 if name.endswith("_key") else 0o644)
            written.append(paths[name])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with exactly `mode`; an existing file is an error, not replaced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError("file appeared while writing the PKI; refusing to overwrite it", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", str(path)) from exc
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
