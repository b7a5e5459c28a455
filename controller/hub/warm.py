"""The inventory targets a hub keeps connected: warm, with keepalive, reconnected with backoff.

Each target is dialled as any controller dials it (`ConnectOptions.connect`: its
inventory key and TLS), registered under its inventory name once authenticated,
and dialled again after a wait from `shoal.hostio.backoff` when the connection
fails or ends. The client's keepalive pings a quiet agent and declares it lost
after three silent intervals, so a vanished host leaves the registry in bounded
time. All targets run under the one fan-out, each for as long as the hub runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shoal.protocol.errors import ShoalConnectionError, ShoalError
from shoal.hostio.backoff import Backoff

from shoal.controller.fanout import fan_out
from shoal.controller.fleet import ConnectOptions
from shoal.controller.hub.dialin import frame_limit_refuses
from shoal.controller.hub.registry import DIRECT, HubAgent, Registry
from shoal.controller.targets import Target

__all__ = ["keep_warm", "RECONNECT_FIRST", "RECONNECT_CAP"]

log = logging.getLogger("shoal.hub")

# The hub's own reconnect schedule for its inventory targets (shoal.hostio.backoff).
RECONNECT_FIRST = 1.0
RECONNECT_CAP = 30.0


async def keep_warm(targets: list[Target], options: Callable[[], ConnectOptions], registry: Registry,
                    serve: Callable[[HubAgent], asyncio.Future[None] | asyncio.Task[None]],
                    errors: dict[str, str], limit: asyncio.Semaphore) -> None:
    """Keep every target connected until cancelled.

    Args:
        options: how to connect now (asked again at every connect: a SIGHUP may have
            re-read the key and TLS files since).
        serve: given each connected agent; returns what finishes when its connection is over.
        errors: the last connection error per target name, for clients asking why one is not there.
        limit: bounds the connects in flight (the hub's fanout).
    """
    for target in targets:
        registry.reserve(target.name)

    async def one(target: Target) -> None:
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_CAP)
        failing = False  # warned already: each retry's failure is news only at debug level
        while True:
            try:
                async with limit:
                    client = await options().connect(target)
                refused = frame_limit_refuses(client.conn.peer_max_frame)
                if refused is not None:  # as a dial-in agent announcing it is refused
                    client.abort()
                    raise ShoalConnectionError(target.name, f"refused: {refused}")
            except ShoalError as exc:
                reason = errors[target.name] = getattr(exc, "reason", None) or str(exc)
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s: %s; retrying with backoff (at most %gs apart)", target.name, reason, RECONNECT_CAP)
                failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            errors.pop(target.name, None)
            backoff.reset()
            failing = False
            log.info("connected to %s (%s)", target.name, client.agent_version)
            agent = HubAgent(name=target.name, client=client, address=_address(target), kind=DIRECT)
            registry.claim(agent, reserved_ok=True)
            try:
                await serve(agent)
            finally:
                client.abort()
            errors[target.name] = client.close_reason or "connection lost"
            await asyncio.sleep(backoff.next_delay())

    await fan_out(targets, one)


def _address(target: Target) -> str:
    if target.path is not None:
        return f"unix:{target.path}"
    host = target.host or "?"
    return f"[{host}]:{target.port}" if ":" in host else f"{host}:{target.port}"
