"""The agent's listening sockets: TCP (TLS when configured) and unix, bound, served and closed.

We accept ourselves (shoal.agent.accept): asyncio's loop floods the log when
descriptors run out. Each listener hands its connections to an `AgentSession`,
directly or, for mutual TLS, after a handshake we run (shoal.agent.tlsgate) so
failures are audited.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import TYPE_CHECKING, Callable

from shoal.protocol.errors import ConfigError

from shoal.agent.accept import Acceptor
from shoal.agent.config import AgentConfig, ListenAddress
from shoal.agent.session import AgentSession
from shoal.agent.strictmodes import check_tls_files
from shoal.hostio.neterrors import bind_reason
from shoal.hostio.unixsock import remove_stale_socket

if TYPE_CHECKING:
    from shoal.agent.server import Agent
    from shoal.agent.tlsgate import TlsAcceptor

__all__ = ["Listeners"]


class Listeners:
    """Every address one agent listens on, and `addresses`, what they are bound to."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.addresses: list[str] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._acceptors: list[Acceptor] = []
        self._unix_paths: list[str] = []
        self._tls: TlsAcceptor | None = None  # TCP listeners' TLS handshakes, when configured

    async def listen(self, addr: ListenAddress) -> None:
        """Bind `addr` and start accepting; ConfigError when it cannot be bound."""
        agent = self._agent
        loop = asyncio.get_running_loop()
        try:
            if addr.kind == "unix":
                assert addr.path is not None
                remove_stale_socket(addr.path)
                server = await loop.create_unix_server(lambda: AgentSession(agent), addr.path, start_serving=False)
                os.chmod(addr.path, 0o600 if not agent.keys.required else 0o666)
                self._unix_paths.append(addr.path)
                self.addresses.append(f"unix:{addr.path}")
            else:
                assert addr.port is not None  # parse_listen gives every TCP address a port
                server = await loop.create_server(
                    self._tcp_protocol(), addr.host, addr.port, reuse_address=True, backlog=1024,
                    start_serving=False)
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    self.addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        except OSError as exc:
            raise ConfigError(f"cannot listen on {addr}: {bind_reason(exc)}", "listen") from exc
        self._servers.append(server)
        factory: Callable[[], asyncio.BaseProtocol] = (
            (lambda: AgentSession(agent)) if addr.kind == "unix" else self._tcp_protocol())
        for sock in server.sockets:
            acceptor = Acceptor(agent, sock.dup(), factory)
            acceptor.start()
            self._acceptors.append(acceptor)

    def _tcp_protocol(self) -> Callable[[], asyncio.BaseProtocol]:
        """Sessions at once, or (mutual TLS) after a handshake we run, so failures are audited."""
        agent = self._agent
        if agent.config.tls is None:
            return lambda: AgentSession(agent)
        if self._tls is None:
            from shoal.hostio.tls import server_context
            from shoal.agent.tlsgate import TlsAcceptor

            check_tls_files(agent.config.tls)
            context = server_context(agent.config.tls.cert, agent.config.tls.key, agent.config.tls.ca)
            self._tls = TlsAcceptor(agent, context)
        return self._tls

    def read_tls_context(self, config: AgentConfig) -> ssl.SSLContext | None:
        """Read the TLS files `config` names, changing nothing; ConfigError names a bad file."""
        tcp_bound = any(not a.startswith("unix:") for a in self.addresses)
        if tcp_bound and (config.tls is None) != (self._tls is None):
            raise ConfigError("turning TLS on or off takes a restart, not a reload", "tls")
        if config.tls is None:
            return None
        from shoal.hostio.tls import server_context

        check_tls_files(config.tls)
        return server_context(config.tls.cert, config.tls.key, config.tls.ca)

    def use_tls_context(self, context: ssl.SSLContext | None) -> None:
        """Give new TLS connections `context` (from `read_tls_context`); open ones keep theirs."""
        if self._tls is not None and context is not None:
            self._tls.context = context

    def stop_accepting(self) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        """Wait for the servers `stop_accepting` closed; remove our unix socket files."""
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._tls is not None:
            await self._tls.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._unix_paths.clear()
