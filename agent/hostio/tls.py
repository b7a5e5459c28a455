"""TLS contexts for optional mutual TLS: each end trusts only the shoal CA.

TLS here is a transport option on top of, not instead of, the key handshake. Both
contexts load just the one CA given (never the system store, since any public CA
vouching for a host must not let it run commands) and require TLS 1.3: every
OpenSSL we can run on has it, and it drops the legacy modes older versions need
configuring away.

Files are checked one by one before OpenSSL sees them, so a mistake is reported
against the file that holds it instead of as an anonymous OpenSSL error.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from shoal.protocol.errors import ConfigError

from shoal.hostio.keyfile import check_private

__all__ = ["server_context", "server_context_problems", "client_context", "dialin_context", "certificate_names"]

# Certificates, keys and CA bundles are a few kilobytes; the cap keeps a wrong
# path (a log, a device) from being read whole.
_MAX_PEM_SIZE = 1024 * 1024

PathLike = str | os.PathLike[str]


def server_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Build the agent's context: present `cert`, demand a client certificate from `ca`.

    Raises:
        ConfigError: a file is missing, unreadable or not what it should be, or
            the key does not belong to the certificate; it names the file.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _configure(ctx, cert, key, ca)
    return ctx


def client_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Build the controller's context: present `cert`, verify the agent against `ca`.

    Host names are checked, so the caller must pass `server_hostname` (the name
    or address the agent was reached by) when wrapping the connection.

    Raises:
        ConfigError: as for `server_context`.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    _configure(ctx, cert, key, ca)
    return ctx


def dialin_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Build a hub's context for agents that dial in: `client_context` without the host-name check.

    The hub cannot know, before the handshake, which agent dialled; it checks the
    name the agent then claims against `certificate_names` instead.

    Raises:
        ConfigError: as for `server_context`.
    """
    ctx = client_context(cert, key, ca)
    ctx.check_hostname = False  # the certificate chain is still verified (CERT_REQUIRED)
    return ctx


def certificate_names(der: bytes) -> list[str]:
    """The DNS names and IP addresses a (verified) certificate is issued for, lower case."""
    try:
        sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [*(name.lower() for name in sans.get_values_for_type(x509.DNSName)),
            *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


def server_context_problems(cert: PathLike, key: PathLike, ca: PathLike) -> list[tuple[str, ConfigError]]:
    """Every reason `server_context` would refuse these files, not just the first.

    For `shoal-agent --check-config`: each file gets the check `server_context`
    makes on it, and when all pass, `server_context` itself is built, so a key
    not matching its certificate (or anything else OpenSSL objects to) is found
    exactly as at start.

    Returns:
        (option, error) pairs, option being "cert", "key" or "ca": the file the
        error is about. Empty when the agent would start with these files.
    """
    checks: list[tuple[str, Callable[[], object]]] = [
        ("cert", lambda: _check_certificates(cert, "certificate")),
        ("key", lambda: _check_private_key(key)),
        ("ca", lambda: _check_certificates(ca, "CA certificate"))]
    problems = [(option, error) for option, check in checks for error in _raised(check)]
    if not problems:
        # What is left is OpenSSL's: the key against the certificate, or the CA file.
        paths = {os.fspath(ca): "ca", os.fspath(cert): "cert"}
        problems = [(paths.get(error.where or "", "cert"), error)
                    for error in _raised(lambda: server_context(cert, key, ca))]
    return problems


def _raised(check: Callable[[], object]) -> list[ConfigError]:
    """The ConfigError `check` raises, as a list of none or one."""
    try:
        check()
    except ConfigError as exc:
        return [exc]
    return []


def _configure(ctx: ssl.SSLContext, cert: PathLike, key: PathLike, ca: PathLike) -> None:
    """Apply what both ends share: TLS 1.3, our CA only, our certificate and key."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _check_certificates(cert, "certificate")
    _check_private_key(key)
    _check_certificates(ca, "CA certificate")
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load CA certificate: {_reason(exc)}", os.fspath(ca)) from exc
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"private key {os.fspath(key)} does not match this certificate ({_reason(exc)})",
                          os.fspath(cert)) from exc


def _read(path: PathLike, what: str, private: bool = False) -> bytes:
    """The file's bytes; a `private` one must be readable by its owner only."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            if private:
                check_private(f.fileno(), where, f"{what} file")
            data = f.read(_MAX_PEM_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(f"no such {what} file", where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file: {exc.strerror}", where) from None
    if len(data) > _MAX_PEM_SIZE:
        raise ConfigError(f"too large to be a {what} file", where)
    return data


def _check_certificates(path: PathLike, what: str) -> None:
    """Require at least one PEM certificate, none of them malformed."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"not a PEM {what} file", os.fspath(path)) from None
    if not certs:
        raise ConfigError(f"no certificate in {what} file", os.fspath(path))


def _check_private_key(path: PathLike) -> None:
    """Require an unencrypted PEM private key (the agent starts unattended), mode 0600."""
    data = _read(path, "private key", private=True)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError("private key is encrypted; shoal needs an unencrypted key",
                          os.fspath(path)) from None
    except ValueError:
        raise ConfigError("not a PEM private key file", os.fspath(path)) from None
    except UnsupportedAlgorithm as exc:
        raise ConfigError(f"unusable private key: {exc}", os.fspath(path)) from None


def _reason(exc: BaseException) -> str:
    """OpenSSL's short reason (e.g. KEY_VALUES_MISMATCH), not its whole error tuple."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)

