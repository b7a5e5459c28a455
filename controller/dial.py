"""Where a target's byte stream is opened: the one seam between a client and the network.

`AgentClient.connect` does not open sockets itself; it asks a `Dialer` to connect its
protocol to the target. `dial_direct` opens the target's TCP or unix socket, with TLS
on top when asked. A relayed target is dialled by `shoal.controller.gateways`
instead, which hands the client a stream through a gateway: the handshake and
everything after it run unchanged over whichever transport the dialer made.

This is also where socket, resolver and TLS errors met while connecting become
shoal's (`connect_error`), so callers above catch only `ShoalError`.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Awaitable, Callable

from shoal.protocol.errors import ShoalConnectionError

from shoal.hostio.neterrors import connect_reason
from shoal.controller.targets import Target

__all__ = ["Dialer", "dial_direct", "connect_error"]

# Connect `protocol` to `target` (its connection_made called with the transport),
# with TLS when a context is given; raise ShoalError when that cannot be done.
Dialer = Callable[[Target, asyncio.BufferedProtocol, "ssl_module.SSLContext | None"], Awaitable[None]]


async def dial_direct(target: Target, protocol: asyncio.BufferedProtocol,
                      ssl: ssl_module.SSLContext | None) -> None:
    """Open the target's own socket: TCP to host:port, or its unix socket path."""
    loop = asyncio.get_running_loop()
    try:
        if target.path is not None:
            await loop.create_unix_connection(lambda: protocol, target.path, ssl=ssl,
                                              server_hostname="localhost" if ssl else None)
        else:
            assert target.host is not None  # a Target has exactly one of host and path
            await loop.create_connection(lambda: protocol, target.host, target.port, ssl=ssl,
                                         server_hostname=target.host if ssl else None)
    except OSError as exc:
        raise connect_error(target.name, exc) from exc


def connect_error(host: str, exc: OSError) -> ShoalConnectionError:
    """The one translation of a socket error while connecting into ours."""
    if isinstance(exc, ssl_module.SSLError):
        return ShoalConnectionError(host, f"TLS handshake failed: {_tls_reason(exc)}")
    return ShoalConnectionError(host, connect_reason(exc))


def _tls_reason(exc: ssl_module.SSLError) -> str:
    """OpenSSL's reason, made readable for the two mistakes people actually make."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"{verify} (is the agent's certificate from the CA given by --tls-ca, with this name?)"
    if exc.reason == "WRONG_VERSION_NUMBER":
        return "the agent does not speak TLS (WRONG_VERSION_NUMBER)"
    return str(exc.reason or exc)
