"""Accepting connections, and what to do when file descriptors run out.

asyncio's own accept loop reports every failed `accept()` through the loop's
exception handler, traceback included; an agent out of descriptors with a full
backlog turned that into hundreds of thousands of log lines a second. We accept
ourselves instead: on EMFILE/ENFILE (or ENOBUFS/ENOMEM) the listener stops
reading for ACCEPT_PAUSE, the oldest unauthenticated connections are shed to free
descriptors, and the whole episode is logged once when it starts and once, with
its counts, when accepting works again.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from shoal.agent.server import Agent

__all__ = ["Acceptor", "FdPressure", "raise_nofile_limit"]

log = logging.getLogger("shoal.agent")

# Seconds a listener stops accepting after running out of descriptors: long enough
# for shed connections to close, short enough that controllers barely notice.
ACCEPT_PAUSE = 0.2
# Connections the kernel queues for us while we are busy or paused.
BACKLOG = 1024
# Seconds without a failed accept that end an episode (and its log line).
EPISODE_QUIET = 1.0
# Connections accepted per readiness callback, so a flood cannot starve the loop.
ACCEPT_BATCH = 64
# Unauthenticated connections shed per exhausted accept: frees room for a few
# newcomers without emptying every handshake in progress at once.
SHED_BATCH = 16
# Descriptors kept beyond max_connections for listeners, the audit log and the
# pipes of running commands, when checking that the limit fits.
FD_RESERVE = 64


class FdPressure:
    """One agent's episodes of running out of descriptors, logged once each.

    An episode ends once the backlog has been drained and no accept has failed
    for EPISODE_QUIET, so a flood arriving in bursts stays one episode.
    """

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._since: float | None = None
        self._last_failure = 0.0
        self._failures = 0
        self._shed = 0
        self._check: asyncio.TimerHandle | None = None

    def exhausted(self, exc: OSError) -> None:
        """An accept failed for lack of resources: shed, and log if this starts an episode."""
        self._last_failure = time.monotonic()
        if self._since is None:
            self._since = self._last_failure
            self._failures = self._shed = 0
            log.warning("cannot accept connections: %s; pausing accepts and shedding "
                        "unauthenticated connections", exc.strerror or exc)
        self._failures += 1
        self._shed += self._agent.admission.shed_startups(SHED_BATCH)

    def relieved(self) -> None:
        """The backlog is empty: end the episode once it stays quiet."""
        if self._since is not None and self._check is None:
            self._check = asyncio.get_running_loop().call_later(EPISODE_QUIET, self._maybe_end)

    def _maybe_end(self) -> None:
        self._check = None
        if self._since is None:
            return
        quiet = time.monotonic() - self._last_failure
        if quiet < EPISODE_QUIET:
            self._check = asyncio.get_running_loop().call_later(EPISODE_QUIET - quiet, self._maybe_end)
            return
        log.warning("accepting connections again after %.1fs: %d failed accept(s), %d unauthenticated "
                    "connection(s) shed", self._last_failure - self._since, self._failures, self._shed)
        self._since = None

    def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None


class Acceptor:
    """Accepts on one listening socket and hands each connection to `factory`.

    `sock` is our own duplicate of a socket an asyncio server bound without serving
    (start_serving=False); we close it, the server closes its own.
    """

    def __init__(self, agent: Agent, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._agent = agent
        self._sock = sock
        sock.setblocking(False)
        sock.listen(BACKLOG)  # asyncio leaves this to start_serving, which we skip
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._ready)

    def close(self) -> None:
        """Stop accepting; the socket itself belongs to the asyncio server that bound it."""
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                self._agent.fd_pressure.relieved()
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE/ENFILE mostly; any other is paused on as well
                return self._pause(exc)
            conn.setblocking(False)
            self._agent.tasks.spawn(self._loop.connect_accepted_socket(self._factory, conn), name="accept")

    def _pause(self, exc: OSError) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._agent.fd_pressure.exhausted(exc)
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._restart)

    def _restart(self) -> None:
        self._resume = None
        if not self._closed and self._sock.fileno() >= 0:
            self.start()


def raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft descriptor limit to the hard one; warn if max_connections still cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, target, exc)
    if soft < max_connections + FD_RESERVE:
        log.warning("file descriptor limit %d (hard limit %s) cannot fit max_connections = %d plus %d for "
                    "listeners and commands; raise it (LimitNOFILE=) or lower max_connections",
                    soft, "unlimited" if hard == resource.RLIM_INFINITY else hard, max_connections, FD_RESERVE)
