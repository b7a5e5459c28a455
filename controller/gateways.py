"""The controller's connections to gateways: one per gateway, shared by every target behind it.

A target whose `via` names a gateway is reached through it (README, Relays): the
first such target opens an authenticated connection to the gateway (the link: an
ordinary `AgentClient`, itself relayed when the gateway has a `via` of its own, which
is how a chain gw1,gw2 works), and every target behind it asks the link for a
stream (`shoal.controller.relay.RelayStream`) and runs its own handshake over it,
end to end. So a thousand hosts behind one gateway cost one connection to it.

Targets connect concurrently: each waits for the same link, then opens its stream.
A gateway that could not be reached fails every host behind it with the reason, `via
gw1: connection refused`, and is not tried again for FAILED_RETRY seconds, so a large
run does not knock at a dead gateway once per host. A link that drops is opened
afresh by the next target that needs it. `close()` ends every link; whoever made the
`ConnectOptions` calls it when the run is over (the CLI does).
"""

from __future__ import annotations

import asyncio
import functools
import ssl as ssl_module
import time
from typing import TYPE_CHECKING

from shoal.protocol.errors import (AuthError, RemoteCommandError, ShoalConnectionError, ShoalError,
                                   ShoalTimeoutError)

from shoal.controller.client import AgentClient
from shoal.controller.dial import connect_error
from shoal.controller.relay import RelayStream
from shoal.controller.targets import Target

if TYPE_CHECKING:
    from shoal.controller.fleet import ConnectOptions

__all__ = ["Gateways", "FAILED_RETRY"]

# Seconds a gateway that could not be reached is not tried again: every host behind
# it fails at once with the same reason instead of waiting out its own attempt.
FAILED_RETRY = 5.0


class Gateways:
    """The links of one run (or shell session), by gateway."""

    def __init__(self) -> None:
        self._links: dict[Target, AgentClient] = {}
        self._pending: dict[Target, asyncio.Task[AgentClient]] = {}
        self._failed: dict[Target, tuple[float, ShoalError]] = {}
        self._closed = False

    async def connect(self, target: Target, options: ConnectOptions) -> AgentClient:
        """Connect and authenticate `target` through its gateway `target.via`.

        Raises ShoalError naming where it failed: `via gw1: ...` when the gateway could
        not be reached (or refused the relay), the target's own error otherwise.
        """
        gateway = target.via
        assert gateway is not None
        try:
            link = await self._link(gateway, options)
        except ShoalError as exc:
            raise _via(exc, target.name, gateway.name) from None
        dial = functools.partial(_dial_through, link, gateway.name, options.timeout)
        try:
            return await AgentClient.connect(target, key=options.key_of(target), ssl=options.ssl_of(target),
                                             timeout=options.timeout, keepalive=options.keepalive, dial=dial)
        except ShoalTimeoutError as exc:
            raise ShoalTimeoutError(f"{exc.what} through {gateway.name}", exc.seconds, target.name) from None

    async def _link(self, gateway: Target, options: ConnectOptions) -> AgentClient:
        """The open link to `gateway`, opening it (once, for every waiter) when there is none."""
        client = self._links.get(gateway)
        if client is not None and not client.closed:
            return client
        failed = self._failed.get(gateway)
        if failed is not None and time.monotonic() - failed[0] < FAILED_RETRY:
            raise failed[1].with_traceback(None)
        task = self._pending.get(gateway)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(gateway, options))
            task.add_done_callback(_retrieved)
            self._pending[gateway] = task
        return await asyncio.shield(task)

    async def _open(self, gateway: Target, options: ConnectOptions) -> AgentClient:
        try:
            client = await options.connect(gateway)
            if "relay" not in client.features:
                await client.close()
                raise ShoalConnectionError(gateway.name, f"the agent cannot relay (agent "
                                           f"{client.agent_version or 'unknown'}: upgrade it)")
            if self._closed:
                await client.close()
                raise ShoalConnectionError(gateway.name, "the run is over")
        except ShoalError as exc:
            self._failed[gateway] = (time.monotonic(), exc)
            raise
        finally:
            self._pending.pop(gateway, None)
        self._failed.pop(gateway, None)
        self._links[gateway] = client
        return client

    async def close(self) -> None:
        """End every link (and so every stream still on one); no new ones open after."""
        self._closed = True
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


async def _dial_through(link: AgentClient, gateway: str, timeout: float, target: Target,
                        protocol: asyncio.BufferedProtocol, ssl: ssl_module.SSLContext | None) -> None:
    """A `Dialer` (shoal.controller.dial): connect `protocol` to `target` through `link`,
    with TLS to the target inside the stream when `ssl` is given."""
    stream = RelayStream(link, gateway, target)
    stream.open(timeout)
    try:
        await stream.opened
        if ssl is None:
            stream.set_protocol(protocol)
            protocol.connection_made(stream)
            return
        tls = await asyncio.get_running_loop().start_tls(
            stream, protocol, ssl, server_hostname=target.host if target.host is not None else "localhost")
    except OSError as exc:
        stream.abort()
        raise connect_error(target.name, exc) from exc
    except BaseException:
        stream.abort()
        raise
    if tls is None:
        raise ShoalConnectionError(target.name, "connection closed during the TLS handshake")
    protocol.connection_made(tls)


def _via(exc: ShoalError, host: str, gateway: str) -> ShoalError:
    """A gateway's failure as the error of a target behind it, saying where it happened."""
    if isinstance(exc, AuthError):
        return AuthError(f"via {gateway}: {exc.reason}", host=host, key_id=exc.key_id)
    if isinstance(exc, ShoalTimeoutError):
        return ShoalTimeoutError(f"via {gateway}: {exc.what}", exc.seconds, host)
    if isinstance(exc, RemoteCommandError):
        return RemoteCommandError(f"via {gateway}: {exc.reason}", exc.code, host, status=exc.status)
    reason = exc.reason if isinstance(exc, ShoalConnectionError) else str(exc)
    return ShoalConnectionError(host, f"via {gateway}: {reason}")


def _retrieved(task: asyncio.Task[AgentClient]) -> None:
    """Mark a link's failure seen, for when every target waiting on it was cancelled."""
    if not task.cancelled():
        task.exception()
