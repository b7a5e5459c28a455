"""The agent as a library: listeners, sessions, shared limits and services.

`Agent` owns what all connections share (keys and policies, counters for the
limits, the audit log, the metrics sampler, detached commands) and hands each
accepted connection to an `AgentSession`. Tests and the fleet benchmarks run
many `Agent`s in one process; the `shoal-agent` CLI runs one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import stat
from typing import TYPE_CHECKING, Any, Callable

from shoal.protocol.connection import KeyLookup
from shoal.protocol.errors import ConfigError, ErrorCode
from shoal.protocol.handshake import SharedKey

from shoal.agent import proctree
from shoal.agent.accept import Acceptor, FdPressure
from shoal.agent.audit import Audit
from shoal.agent.config import AgentConfig, KeyPolicy, ListenAddress, parse_listen
from shoal.agent.session import AgentSession
from shoal.agent.sigclean import clean_child_signals
from shoal.agent.strictmodes import check_path, check_tls_files
from shoal.hostio.tasks import TaskSet
from shoal.hostio.version import software_version
from shoal.agent.transfer import remove_leftovers, transfer_handlers

if TYPE_CHECKING:
    from shoal.agent.commands import CommandRequest
    from shoal.agent.tlsgate import TlsAcceptor

__all__ = ["Agent", "software_version"]

log = logging.getLogger("shoal.agent")

# Seconds a connection may take to authenticate before a new one may shed it when
# the startup caps are full: a handshake is a few round trips, so one still open
# after this is more likely a flood than a controller about to finish.
STARTUP_GRACE = 1.0
# Longest close() waits, after killing them, for commands to report their end.
CLOSE_WAIT = 10.0


class Agent:
    """A shoal agent.

    Args:
        config: settings (listen addresses, limits, keys, audit log...).
        keys: extra keys accepted with full rights (the `--key-file` option), on
            top of those named in `config.keys`.
        reap_orphans: make this process a child subreaper and reap adopted
            orphans, so daemonized grandchildren can be found and leave no zombie.
            Meant for the `shoal-agent` process, not for a test runner.

    Raises ConfigError (bad key files, unsafe listen address) from the constructor
    and from `start()` (address in use).
    """

    def __init__(self, config: AgentConfig | None = None, *, keys: list[SharedKey] | None = None,
                 reap_orphans: bool = False) -> None:
        self.config = config or AgentConfig.default()
        self.software = f"shoal-agent/{software_version()}"
        self.tasks = TaskSet()
        # Loops that never end by themselves (reaper, metrics sampler): cancelled at close.
        self._loops = TaskSet()
        self.sessions: set[AgentSession] = set()
        # Sessions still in the handshake, oldest first (a dict keeps insertion order).
        self.startups: dict[AgentSession, None] = {}
        self.running_commands = 0
        self.detached: dict[int, CommandRequest] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._acceptors: list[Acceptor] = []
        self._stopped = asyncio.Event()
        self.fd_pressure = FdPressure(self)
        self._shedding = 0  # connections shed by the startup caps in the current episode
        self._unix_paths: list[str] = []
        self._tls: TlsAcceptor | None = None  # TCP listeners' TLS handshakes, when configured
        self._reap_orphans = reap_orphans
        self._reaper: Any = None
        self._sampler: Any = None
        self.discovery: Any = None  # shoal.agent.responder.DiscoveryResponder while answering
        self._live_pids: set[int] = set()
        self._handler_factories: list[Callable[[AgentSession], dict[type, Callable[[Any], None]]]] = []
        self.add_handlers(transfer_handlers)
        self.load_keys(keys or [])
        self.audit = Audit(self.config.audit_log)
        self.addresses: list[str] = []

    # -- configuration -------------------------------------------------------

    def load_keys(self, extra: list[SharedKey]) -> None:
        """(Re)build the key table from the config's key files plus `extra`."""
        from shoal.hostio.keyfile import load_key_file

        policies: dict[str, KeyPolicy | None] = {}
        keys: list[SharedKey] = []
        for policy in self.config.keys:
            check_path(policy.file, "key file")
            key = load_key_file(policy.file)
            keys.append(key)
            policies[key.key_id] = policy
        for key in extra:
            keys.append(key)
            policies.setdefault(key.key_id, None)
        self._check_exposure(keyed=bool(keys))
        self._extra_keys = list(extra)
        self.keys = KeyLookup(keys)
        self._policies = policies

    def reload(self, config: AgentConfig, extra: list[SharedKey]) -> None:
        """Adopt a new configuration, key set and TLS files, all or nothing (SIGHUP).

        Sessions already open keep the limits and TLS certificate they started
        with; new connections get the renewed certificate. A session whose key
        was removed is revoked (no new requests, closed once its commands end);
        one whose key's policy changed uses the new policy from its next request
        (AgentSession.policy_reloaded). Discovery
        starts, stops or moves as [discovery] now says; a new discovery socket
        that cannot be bound refuses the reload (ConfigError) and the old one
        keeps answering.
        """
        from shoal.agent.responder import prepare_reload

        tls = self._reload_tls_context(config)
        discovery = prepare_reload(self, config)
        old = self.config
        self.config = config
        try:
            self.load_keys(extra)
        except BaseException:
            self.config = old
            discovery.abort()
            raise
        if self._tls is not None and tls is not None:
            self._tls.context = tls
        discovery.commit()
        for session in list(self.sessions):
            session.policy_reloaded()

    def _reload_tls_context(self, config: AgentConfig) -> ssl.SSLContext | None:
        """Read the TLS files `config` names, changing nothing; ConfigError names a bad file."""
        tcp_bound = any(not a.startswith("unix:") for a in self.addresses)
        if tcp_bound and (config.tls is None) != (self._tls is None):
            raise ConfigError("turning TLS on or off takes a restart, not a reload", "tls")
        if config.tls is None:
            return None
        from shoal.hostio.tls import server_context

        check_tls_files(config.tls)
        return server_context(config.tls.cert, config.tls.key, config.tls.ca)

    def _check_exposure(self, keyed: bool) -> None:
        # The shared key is the authentication the issue asks for; TLS alone (even
        # mutual) does not unlock non-loopback addresses, --insecure does, loudly.
        if keyed or self.config.insecure:
            return
        for text in self.config.listen:
            addr = parse_listen(text)
            if addr.kind == "tcp" and not _is_loopback(addr.host or ""):
                raise ConfigError(
                    f"refusing to listen on {text} without a key: anyone who can reach it could run "
                    "commands; configure a key (--key-file) or pass --insecure", "listen")

    def accepts(self, key_id: str | None) -> bool:
        """Whether a connection authenticated with `key_id` (None: no key) is still welcome."""
        return key_id in self._policies if key_id else not self.keys.required

    def policy_for(self, key_id: str | None) -> KeyPolicy | None:
        """The policy of an authenticated key; None means unrestricted."""
        return self._policies.get(key_id) if key_id else None

    def add_handlers(self, factory: Callable[[AgentSession], dict[type, Callable[[Any], None]]]) -> None:
        """Register extra message handlers (file transfer...) for new sessions."""
        self._handler_factories.append(factory)

    def extra_handlers(self, session: AgentSession) -> dict[type, Callable[[Any], None]]:
        handlers: dict[type, Callable[[Any], None]] = {}
        for factory in self._handler_factories:
            handlers.update(factory(session))
        return handlers

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind every listen address; ConfigError when one cannot be bound."""
        clean_child_signals()
        remove_leftovers(self.config.state_dir)  # temp files of transfers a killed agent left
        try:
            for text in self.config.listen:
                await self._listen(parse_listen(text))
            if self.config.discovery.enabled:
                from shoal.agent.responder import start_responder

                self.discovery = await start_responder(self)
        except BaseException:
            await self._close_servers()
            raise
        if self._reap_orphans and proctree.enable_subreaper():
            self._reaper = proctree.OrphanReaper()
            self._loops.spawn(self._reap_loop(), name="reaper")
        log.info("listening on %s", ", ".join(self.addresses))

    async def _listen(self, addr: ListenAddress) -> None:
        loop = asyncio.get_running_loop()
        try:
            if addr.kind == "unix":
                assert addr.path is not None
                _remove_stale_socket(addr.path)
                server = await loop.create_unix_server(lambda: AgentSession(self), addr.path, start_serving=False)
                os.chmod(addr.path, 0o600 if not self.keys.required else 0o666)
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
            raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}", "listen") from exc
        self._servers.append(server)
        # We accept ourselves (shoal.agent.accept): asyncio's loop floods the log when descriptors run out.
        factory: Callable[[], asyncio.BaseProtocol] = (
            (lambda: AgentSession(self)) if addr.kind == "unix" else self._tcp_protocol())
        for sock in server.sockets:
            acceptor = Acceptor(self, sock.dup(), factory)
            acceptor.start()
            self._acceptors.append(acceptor)

    def _tcp_protocol(self) -> Callable[[], asyncio.BaseProtocol]:
        """Sessions at once, or (mutual TLS) after a handshake we run, so failures are audited."""
        if self.config.tls is None:
            return lambda: AgentSession(self)
        if self._tls is None:
            from shoal.hostio.tls import server_context
            from shoal.agent.tlsgate import TlsAcceptor

            check_tls_files(self.config.tls)
            context = server_context(self.config.tls.cert, self.config.tls.key, self.config.tls.ca)
            self._tls = TlsAcceptor(self, context)
        return self._tls

    async def serve_forever(self) -> None:
        """Wait until the agent stops listening (close())."""
        await self._stopped.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting, say goodbye, let commands finish for `grace` s, kill the rest."""
        await self._close_servers()
        for session in list(self.sessions):
            session.goodbye("agent shutting down")
        deadline = asyncio.get_running_loop().time() + grace
        while self.running_commands and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()
            session.connection_lost(None)
        for req in list(self.detached.values()):
            req.kill(15, 0.5)
        self._loops.cancel_all()
        await self._loops.wait(timeout=1)
        await self.tasks.wait(timeout=10)
        # Killed trees normally finish at once; a pipe held open by something that
        # escaped every kill must not keep the agent from exiting.
        give_up = asyncio.get_running_loop().time() + CLOSE_WAIT
        while self.running_commands and asyncio.get_running_loop().time() < give_up:
            await asyncio.sleep(0.01)
        if self.running_commands:
            log.error("%d command(s) still hold their pipes after kill; exiting anyway", self.running_commands)
        self.tasks.cancel_all()
        await self.tasks.wait(timeout=1)
        self.audit.close()

    async def _close_servers(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
            self.discovery = None
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors.clear()
        self.fd_pressure.close()
        for server in self._servers:
            server.close()
        self._stopped.set()
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

    # -- shared counters -----------------------------------------------------

    def admit(self, session: AgentSession) -> bool:
        """Take a new connection unless over a cap (then refuse it at once).

        A new connection starts in the handshake. Over `max_startups_per_source`
        (its source's) or `max_startups` (anyone's), the oldest such connection is
        shed to make room if it has had STARTUP_GRACE to authenticate: a flood of
        idle unauthenticated sockets then churns through its own slots while a
        real controller connects and authenticates. Otherwise the newcomer is
        refused, so a burst of honest handshakes is not shed before it can finish.
        """
        limits = self.config.limits
        if len(self.sessions) >= limits.max_connections:
            session.conn.fail(ErrorCode.TOO_MANY_CONNECTIONS,
                              f"agent connection limit ({limits.max_connections}) reached")
            self.audit.record("refused", peer=session.peer, reason="connection limit")
            session.abort()
            return False
        same_source = [s for s in self.startups if s.source == session.source]
        victim, limit = None, ""
        if len(same_source) >= limits.max_startups_per_source:
            victim, limit = same_source[0], f"max_startups_per_source ({limits.max_startups_per_source})"
        elif len(self.startups) >= limits.max_startups:
            victim, limit = next(iter(self.startups)), f"max_startups ({limits.max_startups})"
        if victim is not None:
            if not self._shedding:
                log.warning("too many unauthenticated connections: %s reached; shedding the oldest "
                            "or refusing new ones", limit)
            self._shedding += 1
            if session.accepted_at - victim.accepted_at < STARTUP_GRACE:
                self.shed(session, f"{limit} reached")
                return False
            self.shed(victim, f"{limit} reached")
        self.sessions.add(session)
        self.startups[session] = None
        return True

    def shed(self, session: AgentSession, reason: str) -> None:
        """Close a connection still in the handshake to make room for others.

        Audited as `shed` (debug level in the log: a flood must not flood the log).
        """
        self.startups.pop(session, None)
        self.sessions.discard(session)
        session.conn.fail(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections are authenticating; try again")
        self.audit.record("shed", peer=session.peer, reason=reason)
        session.abort()

    def shed_startups(self, count: int) -> int:
        """Shed up to `count` of the oldest connections still in the handshake; how many were."""
        victims = list(self.startups)[:count]
        for victim in victims:
            self.shed(victim, "out of file descriptors")
        return len(victims)

    def _end_shedding(self) -> None:
        if self._shedding and not self.startups:
            log.warning("no unauthenticated connections left; %d were shed or refused", self._shedding)
            self._shedding = 0

    def authenticated(self, session: AgentSession) -> None:
        """The session finished its handshake: it no longer counts as a startup."""
        self.startups.pop(session, None)
        self._end_shedding()

    def release(self, session: AgentSession) -> None:
        self.sessions.discard(session)
        self.startups.pop(session, None)
        self._end_shedding()

    def command_started(self, req: CommandRequest) -> None:
        self.running_commands += 1
        self._live_pids.add(req.child.pid)

    def command_finished(self, req: CommandRequest) -> None:
        self.running_commands -= 1
        self._live_pids.discard(req.child.pid)
        self.detached.pop(req.child.pid, None)

    def adopt_detached(self, req: CommandRequest) -> None:
        """Keep a detached command running after its controller left."""
        self.detached[req.child.pid] = req
        log.info("controller left; detached pid %d keeps running, output in %s", req.child.pid, req.output_file)

    def detached_output_path(self) -> str:
        directory = os.path.join(self.config.state_dir, "detached")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(6)}.out")

    def metrics_snapshot(self) -> dict[str, Any]:
        from shoal.agent.metrics import Sampler, run_sampler

        if self._sampler is None:
            self._sampler = Sampler()
            self._loops.spawn(run_sampler(self._sampler), name="metrics-sampler")
        snap: dict[str, Any] = self._sampler.snapshot()
        return snap

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._reaper.reap(self._live_pids)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead agent; refuse if one is still serving."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot listen on unix:{path}: a non-socket file is in the way", "listen")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on unix:{path}: address already in use", "listen")
