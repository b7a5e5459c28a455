"""The hub: a resident controller holding warm connections for local clients.

`Hub` composes the rest: the registry of connected agents (registry), agents
that dial in (dialin), inventory targets kept warm (warm), the local socket and
the links clients open on it (local, forward), the audit log (audit) and the
Prometheus endpoint (metricshttp). `shoal hub` runs one; tests run them in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey
from shoal.hostio.neterrors import bind_reason
from shoal.hostio.tasks import TaskSet
from shoal.hostio.unixsock import remove_stale_socket
from shoal.hostio.version import software_version

from shoal.controller.fdlimit import raise_open_files_limit
from shoal.controller.fleet import ConnectOptions
from shoal.controller.hub.audit import HubAudit
from shoal.controller.hub.dialin import DialIns
from shoal.controller.hub.local import Link, LocalSession
from shoal.controller.hub.registry import FORGET_AFTER, MAX_DEPARTED, Departed, HubAgent, Registry
from shoal.controller.hub.warm import keep_warm
from shoal.controller.targets import Target

__all__ = ["Hub", "HubSettings"]

log = logging.getLogger("shoal.hub")

# Connections a hub is built to hold (5,000 agents, a burst queued behind them): the
# open-files limit is raised toward room for them, within the hard limit.
HUB_FDS_HOSTS = 16384


@dataclass(frozen=True, slots=True)
class HubSettings:
    """What a hub serves, and where.

    Attributes:
        socket: the local clients' Unix socket (created mode 0600).
        listen: (host, port) pairs where agents dial in.
        key: the hub's key: agents must prove it, and it is what the hub proves.
        targets: inventory targets to keep connected (with `connect`'s keys and TLS).
        connect: how to reach `targets`.
        metrics: (host, port) of the Prometheus endpoint, or None for none.
        audit_log: the audit log's path, or None.
        keepalive: seconds of an agent's silence before the hub pings it (lost after 3x).
        handshake_timeout: seconds a dialling agent has to authenticate.
        drain_grace: seconds a stopping hub waits for requests in flight.
        fanout: connects to inventory targets in flight at once.
        insecure: allow dial-in listeners beyond loopback without a key.
        tls: the dial-in listeners' TLS (`shoal.hostio.tls.dialin_context`): agents
            must then dial in with TLS and a certificate naming the name they claim.
        forget_after: seconds a dial-in name that left is still scraped as down
            (`shoal_up 0`); 0 forgets it at once.
        max_departed: departed dial-in names remembered at most (oldest forgotten first).
    """

    socket: str
    listen: tuple[tuple[str, int], ...] = ()
    key: SharedKey | None = None
    targets: tuple[Target, ...] = ()
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    metrics: tuple[str, int] | None = None
    audit_log: str | None = None
    keepalive: float = 15.0
    handshake_timeout: float = 5.0
    drain_grace: float = 10.0
    fanout: int = 64
    insecure: bool = False
    tls: ssl.SSLContext | None = None
    forget_after: float = FORGET_AFTER
    max_departed: int = MAX_DEPARTED


class Hub:
    """A running hub. `start()`, then `close()` (which drains)."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.software = f"shoal-hub/{software_version()}"
        self.registry = Registry(Departed(settings.max_departed, settings.forget_after))
        self.audit = HubAudit(settings.audit_log)
        self.tasks = TaskSet()
        self.sessions: set[LocalSession] = set()
        self.draining = False
        self.warm_errors: dict[str, str] = {}
        self.dialins = DialIns(self.registry, settings.key, settings.keepalive, settings.handshake_timeout,
                               self.audit, self.serve_agent, settings.tls)
        self._links: dict[HubAgent, set[Link]] = {}
        self._local: asyncio.AbstractServer | None = None
        self._open_requests = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.metrics_address: str | None = None
        self._metrics_server: object | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the local socket, the dial-in listeners and the metrics endpoint; start warming."""
        _check_exposure(self.settings)
        raise_open_files_limit(HUB_FDS_HOSTS)
        loop = asyncio.get_running_loop()
        remove_stale_socket(self.settings.socket, "--socket")
        try:
            with _private_umask():
                self._local = await loop.create_unix_server(lambda: LocalSession(self), self.settings.socket)
            os.chmod(self.settings.socket, 0o600)
        except OSError as exc:
            await self.close(0)
            raise ConfigError(f"cannot listen on unix:{self.settings.socket}: {bind_reason(exc)}", "--socket") from exc
        for host, port in self.settings.listen:
            await self._bind("--listen", host, port, self.dialins.listen(host, port))
        if self.settings.metrics is not None:
            from shoal.controller.hub.metricshttp import start_metrics_server

            async def metrics(host: str, port: int) -> None:
                self._metrics_server, self.metrics_address = start_metrics_server(self, host, port)

            await self._bind("--metrics-listen", *self.settings.metrics, metrics(*self.settings.metrics))
        if self.settings.targets:
            limit = asyncio.Semaphore(max(1, self.settings.fanout))
            self.tasks.spawn(keep_warm(list(self.settings.targets), lambda: self.settings.connect, self.registry,
                                       self.serve_agent, self.warm_errors, limit), name="warm")
        # the metrics address before the dial-in ones, which end the line (scripts read them there)
        scrape = f"; metrics at http://{self.metrics_address}/metrics" if self.metrics_address else ""
        log.info("hub serving %s%s; agents dial in at %s%s", self.settings.socket, scrape,
                 ", ".join(self.dialins.addresses) or "(nowhere)", " (TLS)" if self.settings.tls else "")

    async def _bind(self, option: str, host: str, port: int, binding: Coroutine[Any, Any, None]) -> None:
        """Await `binding`; if the address cannot be bound, close what is open and say
        which option and address it was, in one line (exit 2), not as a crash."""
        try:
            await binding
        except OSError as exc:
            await self.close(0)
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError(f"cannot listen on {where}: {bind_reason(exc)}", option) from exc

    async def close(self, grace: float | None = None) -> None:
        """Drain: refuse new clients, links and agents, give requests in flight `grace`
        seconds (default `drain_grace`), then close everything."""
        self.draining = True
        if self._local is not None:
            self._local.close()
        self.dialins.stop_accepting()
        wait = self.settings.drain_grace if grace is None else grace
        if wait > 0 and not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), wait)
            except asyncio.TimeoutError:
                log.warning("stopping with %d request(s) still open after %gs", self._open_requests, wait)
        for session in list(self.sessions):
            session.abort()
        self.tasks.cancel_all()
        for agent in self.registry.agents():
            await agent.client.close()
        await self.tasks.wait(timeout=5)
        await self.dialins.close()
        if self._metrics_server is not None:
            from shoal.controller.hub.metricshttp import stop_metrics_server

            await stop_metrics_server(self._metrics_server)
            self._metrics_server = None
        if self._local is not None:
            await self._local.wait_closed()
            self._local = None
            try:
                os.unlink(self.settings.socket)
            except FileNotFoundError:
                pass

    def use_credentials(self, key: SharedKey | None, tls: ssl.SSLContext | None, connect: ConnectOptions) -> None:
        """SIGHUP's key and TLS: for the agents that dial in and the targets connected from
        now on; connections already up keep the sessions they authenticated (the gateway
        links of targets with a `via` among them, so they are carried over, not left open)."""
        connect = replace(connect, gateways=self.settings.connect.gateways)
        self.settings = replace(self.settings, key=key, tls=tls, connect=connect)
        self.dialins.key, self.dialins.tls = key, tls

    # -- agents ----------------------------------------------------------------------

    def serve_agent(self, agent: HubAgent) -> asyncio.Task[None]:
        """Watch a registered agent's connection; when it ends, free its name and close its links."""
        self._links[agent] = set()
        return self.tasks.spawn(self._watch(agent), name=f"agent {agent.name}")

    async def _watch(self, agent: HubAgent) -> None:
        try:
            await agent.client.wait_closed()
        finally:
            agent.client.abort()  # stops its keepalive task now rather than at its next tick
            self.registry.release(agent)
            reason = agent.client.close_reason or "connection lost"
            for link in list(self._links.pop(agent, ())):
                link.close(f"{agent.name}: {reason}")
            self.audit.record("agent_disconnected", name=agent.name, peer=agent.address, reason=reason)

    def why_not_connected(self, name: str) -> str:
        """One line for a client asking for an agent the hub does not have."""
        for target in self.settings.targets:
            if target.name.casefold() == name.casefold():
                return f"not connected to the hub: {self.warm_errors.get(target.name, 'connecting')}"
        left = self.registry.departed.maybe_when(name)
        if left is not None:
            at = time.strftime("%H:%M:%S", time.localtime(left))
            return f"no agent of this name is connected to the hub (it left at {at})"
        return "no agent of this name is connected to the hub"

    # -- links and requests ------------------------------------------------------------

    def link_opened(self, link: Link) -> None:
        self._links.setdefault(link.agent, set()).add(link)

    def link_closed(self, link: Link) -> None:
        self._links.get(link.agent, set()).discard(link)

    def request_started(self) -> None:
        self._open_requests += 1
        self._idle.clear()

    def request_ended(self) -> None:
        self._open_requests -= 1
        if self._open_requests <= 0:
            self._open_requests = 0
            self._idle.set()


def _check_exposure(settings: HubSettings) -> None:
    """Refuse dial-in listeners beyond loopback when no key guards them (unless insecure)."""
    import ipaddress

    if settings.key is not None or settings.insecure:
        return
    for host, port in settings.listen:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"refusing to listen for agents on {host}:{port} without a key: anyone could "
                              "dial in under any name; configure a key (--key-file) or pass --insecure", "listen")


@contextmanager
def _private_umask() -> Iterator[None]:
    """Create files readable by us alone while inside (the socket exists 0600 from its first moment)."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)
