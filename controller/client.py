"""One connection from the controller to one agent, and the requests on it.

Layering follows asyncssh: `AgentClient` owns the socket, the sans-I/O connection
and request ids; `RemoteProcess` (`shoal.controller.remote`) is one command's channel; the
fleet runner and the CLI sit on top. Output flow control: we grant the agent a
window per request and grant more only as the consumer takes output from the
process's queue, so a slow consumer bounds memory at one window per request.

This module (with `shoal.controller.dial`, which opens the byte stream) is the
boundary for foreign errors, as httpx's transport is: socket, TLS, resolver and
timeout errors become `ShoalConnectionError`, `AuthError` or `ShoalTimeoutError`
here, so the fan-out above catches only `ShoalError`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from shoal.protocol.defaults import DATA_CHUNK, OUTPUT_WINDOW
from shoal.protocol.connection import Connection, HandshakeComplete, Role, State
from shoal.protocol.errors import (
    AuthError,
    ErrorCode,
    ProtocolError,
    RemoteCommandError,
    RemoteProtocolError,
    ShoalConnectionError,
    ShoalError,
    ShoalTimeoutError,
)
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import (
    Error,
    Exec,
    Goodbye,
    Message,
    MessageType,
    JobAttach,
    MetricsReply,
    MetricsRequest,
    Ping,
    Pong,
)
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.hostio.driver import FrameDriver
from shoal.controller.dial import Dialer, dial_direct
from shoal.controller.escape import quote_peer_bytes
from shoal.controller.outcome import Outcome
from shoal.controller.remote import Command, RemoteProcess, required_features
from shoal.controller.targets import Target

__all__ = ["AgentClient", "PingResult", "ping_all"]

log = logging.getLogger("shoal.controller")

DEFAULT_KEEPALIVE = 15.0
# Bytes of a peer's first words kept to name what answered when it is not an
# agent (an SSH banner, an HTTP reply): enough for a banner line, no more.
PEEK_BYTES = 64
# Error codes meaning the first bytes were not shoal frames at all (as opposed to an
# agent's ERROR, or a HELLO of another protocol version).
_NOT_FRAMES = frozenset({ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_MESSAGE})
# One client's answer in a ping round: (pong, t0 local send, t3 local receive), epoch seconds.
PingResult = tuple[Pong, float, float]


class _ReplyCall:
    """One request awaiting its one reply (METRICS_REPLY, JOBS_REPLY...), an ERROR, or a lost connection.

    Its channel steps with the request and the reply, so a frame its `kind`'s table
    does not list fails the connection (`out_of_order`).
    """

    def __init__(self, client: AgentClient, request_id: int, kind: RequestKind) -> None:
        self.client = client
        self.host = client.name
        self.request_id = request_id
        self.channel = RequestChannel(Role.CONTROLLER, request_id, kind)
        self.reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def send(self, msg: Message) -> None:
        self.channel.send(msg)
        self.client.send(msg)

    def receive(self, msg: Message) -> None:
        if self.reply.done() or not self.client.step(self.channel, msg):
            return
        if isinstance(msg, Error):
            self.reply.set_exception(RemoteCommandError(msg.message, msg.code, self.host, self.request_id,
                                                        msg.status))
        else:
            self.reply.set_result(msg)

    def lost(self, reason: str, code: str = Outcome.CONNECTION_LOST) -> None:
        if not self.reply.done():
            self.reply.set_exception(ShoalConnectionError(self.host, reason))


class AgentClient(FrameDriver):
    """An authenticated connection to one agent. Create with `connect()`."""

    # Replies for requests still open keep coming after close() began (GOODBYE sent).
    dispatch_after_close = True

    def __init__(self, target: Target, key: SharedKey | None, keepalive: float) -> None:
        super().__init__(Connection(Role.CONTROLLER, key=key))  # kernel TCP keepalive timing; we ping
        self.target = target
        self.name = target.name
        self.requests: dict[int, Any] = {}
        self.close_reason: str | None = None
        self.agent_version = ""
        self._next_id = 1
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed_event = asyncio.Event()
        self._keepalive = keepalive
        self._pinger: asyncio.TimerHandle | None = None
        # t0 of each PING in flight -> what its PONG (or the lost connection's error) goes to
        self._pongs: dict[float, Callable[[Pong | ShoalConnectionError], None]] = {}
        self._tls = False
        self._recv_view: memoryview | None = None
        self._first_bytes = b""

    @classmethod
    async def connect(cls, target: Target, *, key: SharedKey | None = None,
                      ssl: ssl_module.SSLContext | None = None, timeout: float = 10.0,
                      keepalive: float = DEFAULT_KEEPALIVE, dial: Dialer = dial_direct) -> AgentClient:
        """Connect (with `dial`: the target's own socket by default) and authenticate
        within `timeout` seconds.

        Raises ShoalConnectionError (refused, unresolvable, TLS failure),
        AuthError (wrong or missing key) or ShoalTimeoutError.
        """
        client = cls(target, key, keepalive)
        try:
            await asyncio.wait_for(client._open(ssl, dial), timeout)
        except asyncio.TimeoutError:
            client.abort()
            raise ShoalTimeoutError("connect", timeout, target.name) from None
        except BaseException:
            client.abort()
            raise
        return client

    async def _open(self, ssl: ssl_module.SSLContext | None, dial: Dialer) -> None:
        await dial(self.target, self, ssl)  # a socket, or a stream through a gateway (controller/dial.py)
        self._tls = ssl is not None
        self.conn.start()
        self.flush()
        await self._ready

    # -- transport events ----------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        self._recv_view = self.conn.get_buffer(sizehint)
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        if len(self._first_bytes) < PEEK_BYTES and self._recv_view is not None:
            self._first_bytes += bytes(self._recv_view[:min(nbytes, PEEK_BYTES - len(self._first_bytes))])
        self._recv_view = None
        super().buffer_updated(nbytes)

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        if isinstance(exc, AuthError):
            self._fail(AuthError("authentication failed" if "failed" in exc.reason else exc.reason,
                                 host=self.name, key_id=exc.key_id))
        else:
            self._fail(ShoalConnectionError(self.name, self._protocol_error_reason(exc)))

    def _protocol_error_reason(self, exc: ProtocolError) -> str:
        """Name a peer that broke the rules before its HELLO: most likely not an agent at all."""
        if self.conn.peer_hello is not None or self._ready.done():
            return f"protocol error: {exc}"
        if exc.code == ErrorCode.TRUNCATED:
            return "connection closed by the peer in the middle of its HELLO"
        if exc.code in _NOT_FRAMES:
            return f"not a shoal agent (it sent {quote_peer_bytes(self._first_bytes)})"
        return f"protocol error: {exc}"  # well-formed frames: an agent refusing, or of another version

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_pinger()
        # After the agent's EOF the connection's state is CLOSED, not OPEN: ask
        # whether the handshake had completed instead.
        # A connect timeout cancels `_ready`, and asking a cancelled future for its
        # exception raises CancelledError.
        opened = self._ready.done() and not self._ready.cancelled() and self._ready.exception() is None
        reason = self.close_reason or ("connection lost" if opened else self._early_close_reason())
        if exc is not None and not self.close_reason:
            reason = f"connection lost ({exc})" if opened else f"connection closed ({exc})"
        self._fail(ShoalConnectionError(self.name, reason))
        self._closed_event.set()

    def _early_close_reason(self) -> str:
        """The agent hung up mid-handshake without an ERROR: name the likely cause."""
        if self.conn.peer_hello is not None:
            return "connection closed by agent during the handshake"
        if self._tls:
            return "connection closed by agent before its HELLO (did it refuse our TLS certificate?)"
        return "connection closed by agent before its HELLO (does it require TLS?)"

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        if isinstance(event, HandshakeComplete):
            self.agent_version = event.peer.software
            if not self._ready.done():
                self._ready.set_result(None)
            if self._keepalive:
                self._pinger = asyncio.get_running_loop().call_later(self._keepalive, self._keepalive_tick)
            return
        if isinstance(event, Pong):
            answer = self._pongs.pop(event.t0, None)
            if answer is not None:
                answer(event)
            return
        if isinstance(event, Goodbye):
            self.close_reason = f"agent closed the connection: {event.reason}"
            return
        if isinstance(event, Error) and event.request_id == 0:
            self._fail(ShoalConnectionError(self.name, f"agent error {event.code}: {event.message}"))
            return
        req = self.requests.get(event.request_id)
        if req is not None:
            req.receive(event)

    # -- sending -------------------------------------------------------------

    @property
    def max_chunk(self) -> int:
        return min(DATA_CHUNK, self.conn.peer_max_frame)

    def send(self, msg: Message) -> None:
        if self.closed or self.conn.state is not State.OPEN:
            return
        self.conn.send(msg)
        self.flush()

    def send_data(self, type_: MessageType, request_id: int, data: bytes) -> None:
        """Queue a raw-data message without building it (hot path); the caller flushes."""
        if not self.closed and self.conn.state is State.OPEN:
            self.conn.send_data(type_, request_id, data)

    def write_failed(self, exc: OSError) -> None:
        # ours from here on: callers see only ShoalError
        self._fail(ShoalConnectionError(self.name, f"connection lost ({exc.strerror or exc})"))

    @property
    def features(self) -> list[str]:
        """What the agent announced it honours beyond protocol version 1 (its HELLO)."""
        return self.conn.peer_hello.features if self.conn.peer_hello is not None else []

    def new_request_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    # -- requests ------------------------------------------------------------

    async def exec(self, command: Command, window: int = OUTPUT_WINDOW) -> RemoteProcess:
        """Start `command`; raises RemoteCommandError if it cannot start."""
        if self.closed:
            raise ShoalConnectionError(self.name, self.close_reason or "connection closed")
        self.check_features(required_features(command))
        if command.idle_timeout is not None and "idle_timeout" not in self.features:
            # an older agent would ignore the member and run the command unbounded
            raise RemoteCommandError("this agent does not support --idle-timeout (upgrade it); nothing was run",
                                     Outcome.NOT_SENT, self.name, status=1)
        rid = self.new_request_id()
        proc = RemoteProcess(self, rid, command.timeout, command.idle_timeout)
        self.requests[rid] = proc
        if command.attach is not None:
            proc._send(JobAttach(rid, job=command.attach, window=window))
            await proc._started
            return proc
        proc._send(Exec(
            rid, argv=command.argv, shell=command.shell, env=command.env, cwd=command.cwd,
            timeout=command.timeout, stdin=command.stdin, window=window, detach=command.detach,
            kill_grace=command.kill_grace, idle_timeout=command.idle_timeout, user=command.user, pty=command.pty,
            rows=command.rows, cols=command.cols, requires=required_features(command),
        ))
        await proc._started
        return proc

    def check_features(self, needed: list[str]) -> None:
        """Refuse here what the agent announced no support for: it would ignore the field.

        Raises:
            RemoteCommandError: `unsupported` (status 126), naming what is missing.
        """
        missing = [name for name in needed if name not in self.features]
        if missing:
            raise RemoteCommandError(f"the agent does not support {', '.join(missing)} "
                                     f"(agent {self.agent_version or 'unknown'}: upgrade it); nothing was run",
                                     ErrorCode.UNSUPPORTED, host=self.name, status=126)

    async def metrics(self) -> dict[str, Any]:
        """Ask the agent for a metrics snapshot (schema in `shoal.agent.metrics`).

        Raises RemoteCommandError when the agent refuses (e.g. the key may not
        read metrics) and ShoalConnectionError when the connection is lost first.
        """
        reply = await self.request_reply(MetricsRequest, RequestKind.METRICS)
        assert isinstance(reply, MetricsReply)  # the table admits no other reply
        return dict(reply.metrics)

    async def request_reply(self, make: Callable[[int], Message], kind: RequestKind) -> Message:
        """Send the request `make(request_id)` builds and await its one reply, judged
        by `kind`'s table.

        Raises RemoteCommandError when the agent answers ERROR and ShoalConnectionError
        when the connection is lost first (or the agent broke the table).
        """
        if self.closed:
            raise ShoalConnectionError(self.name, self.close_reason or "connection closed")
        rid = self.new_request_id()
        call = _ReplyCall(self, rid, kind)
        self.requests[rid] = call
        call.send(make(rid))
        try:
            return await call.reply
        finally:
            self.requests.pop(rid, None)

    async def ping(self) -> PingResult:
        """Round trip a PING: (pong, t0 local send, t3 local receive), epoch seconds.

        Raises ShoalConnectionError when the connection is closed or lost first.
        """
        (result,) = await ping_all([self])
        if isinstance(result, ShoalConnectionError):
            raise result
        return result

    def send_ping(self, answer: Callable[[Pong | ShoalConnectionError], None], t0: float | None = None) -> float:
        """Send a PING now (with `t0`, or the clock when it is not given or another
        PING in flight has it) and return the t0 sent. `answer` is called once, straight from
        the dispatch: with the agent's PONG, or with the error when the connection is
        lost first. A callback, not a future: a hub forwarding a client's ping round
        to thousands of agents then pays no future and no extra turn of the loop each.

        Raises ShoalConnectionError when the connection is closed (`answer` is then never called).
        """
        if t0 is None or t0 in self._pongs:
            t0 = time.time()  # finite and ours: moving it on always ends (not so a peer's 1e300)
            while t0 in self._pongs:
                t0 = t0 + 1e-6
        self.send(Ping(0, t0=t0))
        if self.closed:
            raise ShoalConnectionError(self.name, self.close_reason or "connection closed")
        self._pongs[t0] = answer
        return t0

    def _keepalive_tick(self) -> None:
        """Every keepalive interval: ping when quiet; declare the agent lost after three
        silent intervals. A timer, not a task: a hub holds thousands of these."""
        self._pinger = None
        if self.closed:
            return
        silent = time.monotonic() - self._last_frame
        if silent >= 3 * self._keepalive:
            self.close_reason = f"connection lost (no answer for {silent:.0f}s)"
            self.abort()
            return
        if silent >= self._keepalive:
            self.send(Ping(0, t0=time.time()))
        self._pinger = asyncio.get_running_loop().call_later(self._keepalive, self._keepalive_tick)

    # -- closing -------------------------------------------------------------

    def step(self, channel: RequestChannel, msg: Message) -> bool:
        """Step a request's state machine with the agent's `msg`; False when its table
        refuses it (out of order, past our window): the connection fails with its code."""
        try:
            channel.receive(msg)
        except RemoteProtocolError as exc:
            self.protocol_violation(f"agent broke request {channel.request_id}: {exc}", exc.code)
            return False
        return True

    def protocol_violation(self, reason: str, code: str = ErrorCode.PROTOCOL_ERROR) -> None:
        self.conn.fail(code, reason)
        self.flush()
        self._fail(ShoalConnectionError(self.name, f"protocol error: {reason}"))

    def _fail(self, exc: ShoalError) -> None:
        first = not self.closed
        self.closed = True
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()  # retrieved: a failed connect is reported by connect()
        if first:
            self.close_reason = self.close_reason or str(exc).split(": ", 1)[-1]
        for req in list(self.requests.values()):
            req.lost(self.close_reason or "connection lost")
        self.requests.clear()
        pongs, self._pongs = self._pongs, {}
        for answer in pongs.values():
            answer(ShoalConnectionError(self.name, self.close_reason or "connection lost"))
        if self.transport is not None:
            self.transport.close()

    def _stop_pinger(self) -> None:
        """Cancel the keepalive timer and drop our reference to it (the timer holds this
        client until it fires: a finished connection's buffers go now, not 15 s later)."""
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None

    def abort(self) -> None:
        self._stop_pinger()
        if self.transport is not None:
            self.transport.abort()
        else:
            self._closed_event.set()
        self.closed = True

    async def wait_closed(self) -> None:
        """Wait until the connection has closed, for whatever reason."""
        await self._closed_event.wait()

    async def close(self) -> None:
        """Say goodbye and wait for the socket to close."""
        self._stop_pinger()
        if self.transport is not None and not self.closed:
            self.send(Goodbye(0, reason="done"))
            self.close_reason = "closed by controller"
            self.closed = True
            self.transport.close()
        elif self.transport is not None:
            self.transport.close()
        else:
            self._closed_event.set()
        await self._closed_event.wait()


async def ping_all(clients: Sequence[AgentClient]) -> list[PingResult | ShoalConnectionError]:
    """PING every client at once and wait for every answer: each client's PingResult,
    or the error that ended its connection first, in the order of `clients`.

    One future for the whole round, not a task and a future per client: a round to
    thousands of agents (through a hub, above all) costs a callback per agent.
    """
    results: list[PingResult | ShoalConnectionError | None] = [None] * len(clients)
    sent = [0.0] * len(clients)
    waiting = len(clients)
    everyone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(i: int, pong: Pong | ShoalConnectionError) -> None:
        nonlocal waiting
        results[i] = (pong, sent[i], time.time()) if isinstance(pong, Pong) else pong
        waiting -= 1
        if waiting == 0 and not everyone.done():
            everyone.set_result(None)

    for i, client in enumerate(clients):
        try:
            sent[i] = client.send_ping(partial(answer, i))
        except ShoalConnectionError as exc:
            results[i] = exc
            waiting -= 1
    if waiting:
        await everyone
    return [r for r in results if r is not None]
