"""TLS started on a connection already open, in whichever role, then handed to a driver.

Both ends run their TLS handshakes themselves instead of asking asyncio for a TLS
server or connection: the agent, so a failed handshake is seen and audited
(shoal.agent.tlsgate); and a hub with its dial-in agents, because there the TLS
roles are not the TCP ones. TLS roles follow shoal's roles (PROTOCOL.md section
7): the agent is the TLS server and the hub the TLS client even though the agent
opened the TCP connection, so the certificates `shoal certs init` and `shoal
bootstrap` issue serve both directions unchanged.

The plain transport must be reading-paused from its `connection_made` on (use
`Paused` as its protocol), so no byte of the peer's handshake is read before
`start_tls` takes the transport over.
"""

from __future__ import annotations

import asyncio
import ssl

from shoal.hostio.driver import FrameDriver

__all__ = ["Paused", "EarlyBytes", "secure", "handshake_failure"]


class Paused(asyncio.Protocol):
    """A plain connection's protocol until `secure` takes it: reads nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()


class EarlyBytes(asyncio.Protocol):
    """The TLS layer's protocol during the handshake; keeps what arrives before the driver.

    Plaintext the peer sends right behind its last handshake message (at most one
    socket read, since the awaiting task resumes before the next one) is kept here
    and replayed into the driver by `hand_over`.
    """

    def __init__(self) -> None:
        self._early: list[bytes] = []
        self._eof = False

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> None:
        self._eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing to do: a failure is raised by `secure`, a success belongs to the driver."""

    def hand_over(self, tls: asyncio.Transport, driver: FrameDriver) -> None:
        """Make `driver` the TLS transport's protocol and give it what came early."""
        tls.set_protocol(driver)
        driver.connection_made(tls)
        for data in self._early:
            _feed(driver, data)
        if self._eof and not driver.closed:
            driver.eof_received()


async def secure(transport: asyncio.Transport, context: ssl.SSLContext, *, server_side: bool,
                 timeout: float) -> tuple[asyncio.Transport, EarlyBytes] | None:
    """Run the TLS handshake on `transport` within `timeout` seconds.

    Returns:
        The TLS transport and what arrived early (for `EarlyBytes.hand_over`), or
        None when the peer left between its handshake and now.

    Raises:
        OSError: the handshake failed (ssl.SSLError), timed out or was reset;
            `handshake_failure` says why in a few words.
    """
    early = EarlyBytes()
    tls = await asyncio.get_running_loop().start_tls(
        transport, early, context, server_side=server_side, ssl_handshake_timeout=timeout)
    return None if tls is None else (tls, early)


def _feed(driver: FrameDriver, data: bytes) -> None:
    """Deliver bytes through the driver's BufferedProtocol interface."""
    view = memoryview(data)
    while view and not driver.closed:
        buf = driver.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        driver.buffer_updated(n)
        view = view[n:]


# OpenSSL's reasons when the peer's first bytes are no TLS record at all.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG",
                      "RECORD_LAYER_FAILURE"})


def handshake_failure(exc: OSError, timeout: float) -> str:
    """Why a handshake failed, in a few words (OpenSSL's reason, not its tuple)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason.lower().replace("_", " ")
        return f"the peer does not speak TLS ({reason})" if exc.reason in _NOT_TLS else reason
    if isinstance(exc, ConnectionAbortedError):  # start_tls's own deadline
        return f"no handshake within {timeout:g}s"
    if isinstance(exc, ConnectionResetError):
        return "connection closed by the peer"
    return exc.strerror or type(exc).__name__
