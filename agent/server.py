"""The agent as a library: what all connections share, composed in one `Agent`.

`Agent` holds the configuration and composes one collaborator per job: the key
table (shoal.agent.keys), admission of connections (admission), the listeners
(listeners), running commands (running) and jobs (jobs), extra message
handlers (handlers), host metrics (metrics), the orphan reaper (proctree) and
discovery (responder). Each accepted connection becomes an `AgentSession`. Tests
and the fleet benchmarks run many `Agent`s in one process; the `shoal-agent` CLI
runs one.
"""

from __future__ import annotations

import asyncio
import os
import logging
from typing import TYPE_CHECKING

from shoal.protocol.handshake import SharedKey

from shoal.agent import proctree
from shoal.agent.accept import FdPressure
from shoal.agent.admission import Admission
from shoal.agent.audit import Audit
from shoal.agent.childenv import inherited_env
from shoal.agent.config import AgentConfig, parse_listen
from shoal.agent.dialout import DialOut
from shoal.agent.jobs import JobTable, job_handlers
from shoal.agent.handlers import HandlerRegistry
from shoal.agent.keys import KeyTable
from shoal.agent.listeners import Listeners
from shoal.agent.metrics import HostMetrics
from shoal.agent.relay import relay_handlers
from shoal.agent.running import RunningCommands
from shoal.agent.session import AgentSession
from shoal.agent.sigclean import clean_child_signals
from shoal.hostio.tasks import TaskSet
from shoal.hostio.version import software_version
from shoal.agent.transfer import hold_journal, transfer_handlers

if TYPE_CHECKING:
    from shoal.hostio.atomic import JournalHold
    from shoal.agent.responder import DiscoveryResponder

__all__ = ["Agent", "software_version"]

log = logging.getLogger("shoal.agent")

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
        self._stopped = asyncio.Event()
        self._reap_orphans = reap_orphans
        self.discovery: DiscoveryResponder | None = None  # while answering
        self.journal: JournalHold | None = None  # from start: this agent's share of the state directory
        self.handlers = HandlerRegistry()
        self.handlers.add(transfer_handlers)
        self.handlers.add(job_handlers)
        self.handlers.add(relay_handlers)
        self.keys = KeyTable.load(self.config, keys or [])
        self.audit = Audit(self.config.audit_log)
        self.admission = Admission(self.audit, lambda: self.config.limits)
        self.running = RunningCommands()
        # Our environment, less what is the agent's alone, as every command inherits it:
        # filtered once here rather than on every EXEC (shoal.agent.childenv).
        self.child_env = inherited_env(os.environ)
        self.jobs = JobTable(self)
        self.metrics = HostMetrics(self._loops)
        self.listeners = Listeners(self)
        self.fd_pressure = FdPressure(self)
        self.dialers: list[DialOut] = []  # the hubs it dials (config.connect)
        self._dialing = TaskSet()

    @property
    def sessions(self) -> set[AgentSession]:
        """Open connections (shoal.agent.admission)."""
        return self.admission.sessions

    @property
    def addresses(self) -> list[str]:
        """What the listeners are bound to: `host:port`, `[v6]:port`, `unix:/path`."""
        return self.listeners.addresses


    def reload(self, config: AgentConfig, extra: list[SharedKey]) -> None:
        """Adopt a new configuration, key set and TLS files, all or nothing (SIGHUP).

        Sessions already open keep the limits and TLS certificate they started
        with; new connections (to hubs too) get the renewed certificate. A session whose key
        was removed is revoked (no new requests, closed once its commands end)
        and the running jobs it started are killed (JobTable.revoke);
        one whose key's policy changed uses the new policy from its next request
        (AgentSession.policy_reloaded). Discovery
        starts, stops or moves as [discovery] now says; a new discovery socket
        that cannot be bound refuses the reload (ConfigError) and the old one
        keeps answering.
        """
        from shoal.agent.responder import prepare_reload

        tls = self.listeners.read_tls_context(config)
        discovery = prepare_reload(self, config)
        try:
            keys = KeyTable.load(config, extra)
        except BaseException:
            discovery.abort()
            raise
        self.config, self.keys = config, keys
        self.listeners.use_tls_context(tls)
        for dialer in self.dialers:
            dialer.tls = tls  # from its next connection on
        discovery.commit()
        for session in list(self.sessions):
            session.policy_reloaded()
        self.jobs.revoke(keys.accepts)  # a removed key's jobs end too (shoal.agent.jobs)

    # -- lifecycle -----------------------------------------------------------

    async def start(self, dial: bool = True) -> None:
        """Bind every listen address; ConfigError when one cannot be bound. Then dial the
        hubs in `connect`, or with `dial=False` only once `start_dialing()` is called: a
        process starting thousands of agents (a benchmark's pool) has them all up first."""
        clean_child_signals()
        self.journal = hold_journal(self.config.state_dir)  # and temp files a killed agent left
        try:
            for text in self.config.listen:
                await self.listeners.listen(parse_listen(text))
            dial_tls = self.listeners.read_tls_context(self.config) if self.config.connect else None
            self.dialers = [DialOut(self, address, dial_tls) for address in self.config.connect]
            if self.config.discovery.enabled:
                from shoal.agent.responder import start_responder

                self.discovery = await start_responder(self)
        except BaseException:
            await self._close_servers()
            self._release_journal()
            raise
        if self._reap_orphans and proctree.enable_subreaper():
            self._loops.spawn(proctree.reap_orphans(self.running.pids), name="reaper")
        if dial:
            self.start_dialing()
        if self.addresses:
            log.info("listening on %s", ", ".join(self.addresses))

    def start_dialing(self) -> None:
        """Dial every hub in `connect` (after `start(dial=False)`)."""
        for dialer in self.dialers:
            self._dialing.spawn(dialer.run(), name=f"dial {dialer.address}")

    async def serve_forever(self) -> None:
        """Wait until the agent stops listening (close())."""
        await self._stopped.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting, say goodbye, let commands finish for `grace` s, kill the rest."""
        await self._close_servers()
        for session in list(self.sessions):
            session.goodbye("agent shutting down")
        await self.running.wait_idle(grace)
        for session in list(self.sessions):
            session.abort()
            session.connection_lost(None)
        self.jobs.close()
        self._loops.cancel_all()
        await self._loops.wait(timeout=1)
        await self.tasks.wait(timeout=10)
        # Killed trees normally finish at once; a pipe held open by something that
        # escaped every kill must not keep the agent from exiting.
        if not await self.running.wait_idle(CLOSE_WAIT):
            log.error("%d command(s) still hold their pipes after kill; exiting anyway", self.running.count)
        self.tasks.cancel_all()
        await self.tasks.wait(timeout=1)
        self.audit.close()
        self._release_journal()

    def _release_journal(self) -> None:
        if self.journal is not None:
            self.journal.release()

    async def _close_servers(self) -> None:
        self._dialing.cancel_all()
        await self._dialing.wait(timeout=1)
        if self.discovery is not None:
            self.discovery.close()
            self.discovery = None
        self.listeners.stop_accepting()
        self.fd_pressure.close()
        self._stopped.set()
        await self.listeners.close()
