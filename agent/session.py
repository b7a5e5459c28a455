"""One controller connection on the agent: drive the protocol, dispatch requests.

The driver is short on purpose and shared: `shoal.hostio.driver.FrameDriver` feeds
bytes to the sans-I/O connection, hands each message to `dispatch` here (and on to
its handler), and writes whatever the connection queued with one `writev`. A bad
frame closes this connection only; a bad request gets an ERROR frame for that
request id only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.protocol.connection import Connection, HandshakeComplete, Role, State
from shoal.protocol.errors import AuthError, ErrorCode, ProtocolError, RemoteProtocolError
from shoal.protocol.fields import EXEC_FEATURES, TRANSFER_FEATURES
from shoal.protocol.request import RequestChannel, RequestKind
from shoal.protocol.messages import (
    Cancel,
    Error,
    Exec,
    Goodbye,
    Message,
    MessageType,
    MetricsReply,
    MetricsRequest,
    Ping,
    Pong,
    Resize,
    Signal,
    Stdin,
    StdinEof,
    Window,
)

from shoal.agent.commands import CommandRequest
from shoal.agent.jobs import AttachRequest
from shoal.agent.execstart import start_exec
from shoal.agent.handlers import HandlerTable
from shoal.agent.log import ConnLog
from shoal.agent.process import ChildResult
from shoal.agent.relay import RelayStream
from shoal.hostio.driver import FrameDriver

if TYPE_CHECKING:
    from shoal.agent.config import KeyPolicy, Limits
    from shoal.agent.server import Agent

__all__ = ["AgentSession", "peer_name"]

log = logging.getLogger("shoal.agent")

# Grace given to a dropped controller's commands between SIGTERM and SIGKILL, so
# that everything is gone within a second of the connection closing.
DISCONNECT_GRACE = 0.5
# Messages that act on a request already running (or on none): a revoked key's
# connection may still send them, so its running commands can be fed and stopped.
_CONTROL = (Window, Stdin, StdinEof, Signal, Cancel, Resize, Ping, Pong, Goodbye, Error)
REVOKED = "key revoked"


class AgentSession(FrameDriver):
    """The agent's end of one connection."""

    def __init__(self, agent: Agent, name: str = "") -> None:
        """`name`: announced in HELLO when this is a connection the agent dialled to a hub."""
        self.agent = agent
        self.limits: Limits = agent.config.limits
        super().__init__(Connection(
            Role.AGENT, keys=agent.keys, max_frame_size=self.limits.max_frame_size,
            software=agent.software, features=sorted(EXEC_FEATURES | TRANSFER_FEATURES), name=name,
        ), keepalive=self.limits.keepalive)
        self.peer = "?"
        self.source = "?"  # the peer's address without the port: what per-source limits count
        self.accepted_at = time.monotonic()
        self.log = ConnLog(log, {"peer": "?"})
        self.requests: dict[int, Any] = {}
        self.policy: KeyPolicy | None = None
        self.key_id: str | None = None
        self.revoked = False  # its key left the configuration: no new requests, close when idle
        self._timers: list[asyncio.TimerHandle] = []
        self._handlers = HandlerTable()
        self._handlers.add(Exec, lambda msg: start_exec(self, msg))
        self._handlers.add(Stdin, self._on_stdin)
        self._handlers.add(StdinEof, self._on_stdin_eof)
        self._handlers.add(Signal, self._on_signal)
        self._handlers.add(Cancel, self._on_cancel)
        self._handlers.add(Window, self._on_window)
        self._handlers.add(Resize, self._on_resize)
        self._handlers.add(Ping, self._on_ping)
        self._handlers.add(Pong, lambda m: None)
        self._handlers.add(Goodbye, self._on_goodbye)
        self._handlers.add(MetricsRequest, self._on_metrics)
        self._handlers.add(Error, self._on_error)
        self._handlers.update(agent.handlers.for_session(self))

    # -- transport events ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # socket tuning, write-buffer limits
        assert isinstance(transport, asyncio.Transport)
        self.peer = peer_name(transport)
        self.source = self.peer.rpartition(":")[0] or self.peer
        self.accepted_at = time.monotonic()
        self.log = ConnLog(log, {"peer": self.peer})
        if not self.agent.admission.admit(self):
            return
        self.agent.audit.record("accepted", peer=self.peer)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.limits.handshake_timeout, self._handshake_deadline))
        self._timers.append(loop.call_later(self.limits.idle_timeout, self._idle_check))

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        if isinstance(exc, AuthError):
            self.agent.audit.record("auth_failed", peer=self.peer, key_id=exc.key_id, reason=exc.reason)
        else:  # logged once, by the audit record's summary
            self.agent.audit.record("protocol_error", peer=self.peer, key_id=self.key_id, code=exc.code,
                                    reason=str(exc))
        self.abort()

    def internal_error(self, exc: Exception) -> None:
        self.log.error("internal error, closing connection", exc_info=exc)
        self.conn.fail(ErrorCode.INTERNAL, "internal error")
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.transport = None
        for t in self._timers:
            t.cancel()
        for req in list(self.requests.values()):
            self._drop_request(req)
        self.agent.admission.release(self)
        self.log.debug("connection closed (%s)", exc or "eof")

    def pause_writing(self) -> None:
        super().pause_writing()
        for req in self.requests.values():
            if isinstance(req, CommandRequest):
                req.child.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        for req in list(self.requests.values()):
            if isinstance(req, (CommandRequest, AttachRequest, RelayStream)):
                req.grant(0)

    # -- sending -------------------------------------------------------------

    def send(self, msg: Message) -> None:
        if not self.closed:
            self.conn.send(msg)
            self.flush()

    def send_data(self, kind: MessageType, request_id: int, data: bytes) -> None:
        if not self.closed:
            self.conn.send_data(kind, request_id, data)
            self.flush()

    def abort(self) -> None:
        """Close after flushing any queued ERROR frame."""
        self.flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def goodbye(self, reason: str) -> None:
        if self.conn.state is State.OPEN:
            self.send(Goodbye(0, reason=reason))

    # -- dispatch ------------------------------------------------------------

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        if isinstance(event, HandshakeComplete):
            return self._on_authenticated(event)
        if self.revoked and not isinstance(event, _CONTROL) and event.request_id not in self.requests:
            self.agent.audit.record("denied", peer=self.peer, key_id=self.key_id, request=event.request_id,
                                    what=event.TYPE.name.lower(), reason=REVOKED)
            self.request_error(event.request_id, ErrorCode.PERMISSION_DENIED,
                               f"permission denied for key {self.key_id}: {REVOKED}", 126)
            return
        handler = self._handlers.get(type(event))
        if handler is None:
            self.send(Error(event.request_id, code=ErrorCode.UNSUPPORTED,
                            message=f"{event.TYPE.name} is not handled by an agent"))
            return
        handler(event)

    def _on_authenticated(self, event: HandshakeComplete) -> None:
        self.agent.admission.authenticated(self)
        self.key_id = event.key_id
        self.policy = self.agent.keys.policy_for(event.key_id)
        self.log = ConnLog(log, {"peer": self.peer, "key": event.key_id})
        self.agent.audit.record("authenticated", peer=self.peer, key_id=event.key_id,
                                key_name=self.policy.name if self.policy else None)
        if not self.agent.keys.accepts(event.key_id):
            self.revoke()  # the handshake began before a reload removed its key

    # -- reload ----------------------------------------------------------------

    def policy_reloaded(self) -> None:
        """The configuration changed (SIGHUP): revoke, or adopt the key's new policy.

        A removed key ends the connection (`revoke`). A changed policy applies from
        the next request on; the connection and the commands it runs carry on.
        """
        if self.conn.state is not State.OPEN or self.revoked or self.closed:
            return  # not authenticated yet: `_on_authenticated` checks the key
        if not self.agent.keys.accepts(self.key_id):
            return self.revoke()
        policy = self.agent.keys.policy_for(self.key_id)
        if policy != self.policy:
            self.policy = policy
            self.agent.audit.record("policy_changed", peer=self.peer, key_id=self.key_id,
                                    key_name=policy.name if policy else None)

    def revoke(self) -> None:
        """Refuse every new request; close once the running commands end.

        They get the kill grace (`limits.kill_grace`) to end by themselves, then
        their trees are killed, so a revoked key keeps nothing running for long.
        """
        self.revoked = True
        running = [r for r in self.requests.values() if isinstance(r, CommandRequest)]
        self.agent.audit.record("revoked", peer=self.peer, key_id=self.key_id, running=len(running))
        if running:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(self.agent.config.limits.kill_grace, self._kill_revoked))
        self._maybe_close_revoked()

    def _kill_revoked(self) -> None:
        for req in list(self.requests.values()):
            if isinstance(req, CommandRequest):
                req.kill(signal.SIGTERM, DISCONNECT_GRACE)

    def _maybe_close_revoked(self) -> None:
        if self.revoked and not self.closed and not self.command_count():
            self.agent.audit.record("revoked_closed", peer=self.peer, key_id=self.key_id)
            self.goodbye(REVOKED)
            self.abort()

    def request_error(self, request_id: int, code: str, message: str, status: int | None = None) -> None:
        self.send(Error(request_id, code=code, message=message, status=status))

    def command_count(self) -> int:
        return sum(1 for r in self.requests.values() if isinstance(r, CommandRequest))

    def command_done(self, req: CommandRequest, result: ChildResult) -> None:
        self.requests.pop(req.request_id, None)
        self.agent.running.finished(req)
        self.agent.audit.record(
            "exit", peer=self.peer, key_id=self.key_id, request=req.request_id, argv=req.argv, cwd=req.cwd,
            user=req.user, start=round(req.started, 6), duration=round(result.duration, 6), status=result.status,
            timed_out=req.timed_out, stdout_bytes=req.bytes[1], stderr_bytes=req.bytes[2],
            stdin_bytes=req.stdin_bytes, leftovers_ended=req.leftovers_ended,
        )
        self.send(req.exit_message(result))
        self._maybe_close_revoked()

    def _request(self, msg: Message, kind: type | tuple[type, ...] = (CommandRequest, AttachRequest)) -> Any:
        """The command `msg` is for; None when there is none (answered `unknown_request`)
        or the id is another kind's request, whose table refuses `msg` (the connection fails)."""
        req = self.requests.get(msg.request_id)
        if isinstance(req, kind):
            return req
        channel = getattr(req, "channel", None)
        if isinstance(channel, RequestChannel):
            self.step(channel, msg)
            return None
        self.log.info("%s for unknown request", msg.TYPE.name, req=msg.request_id)
        self.request_error(msg.request_id, ErrorCode.UNKNOWN_REQUEST, f"no running request {msg.request_id}")
        return None

    def _on_stdin(self, msg: Stdin) -> None:
        req = self._request(msg)
        if req is not None:
            try:
                req.stdin(msg.data)  # its channel checks the stdin window
            except RemoteProtocolError as exc:
                self.request_broke(exc)

    def _on_stdin_eof(self, msg: StdinEof) -> None:
        req = self._request(msg)
        if req is not None and self.step(req.channel, msg):
            req.child.close_stdin()

    def _on_signal(self, msg: Signal) -> None:
        req = self._request(msg)
        if req is not None and self.step(req.channel, msg):
            req.child.signal(msg.signal)

    def _on_cancel(self, msg: Cancel) -> None:
        req = self._request(msg)
        if req is not None and self.step(req.channel, msg):
            req.cancel(msg.grace)

    def step(self, channel: RequestChannel, msg: Message) -> bool:
        """Step a request's state machine with the controller's `msg`; False when its
        table refuses it (the connection fails with the table's code)."""
        try:
            channel.receive(msg)
        except RemoteProtocolError as exc:
            self.request_broke(exc)
            return False
        return True

    def request_broke(self, exc: RemoteProtocolError) -> None:
        """The controller broke a request's rules (out_of_order, window_exceeded): close."""
        self.conn.fail(exc.code, str(exc))
        self.abort()

    def _on_window(self, msg: Window) -> None:
        req = self.requests.get(msg.request_id)
        if req is not None:
            try:
                req.grant(msg.bytes)  # its channel's table and window (a tree request's table refuses it)
            except RemoteProtocolError as exc:
                self.request_broke(exc)

    def _on_resize(self, msg: Resize) -> None:
        # Dropped, like WINDOW, once the request is gone: a size change may cross its EXIT.
        req = self.requests.get(msg.request_id)
        if isinstance(req, CommandRequest) and self.step(req.channel, msg):
            req.child.resize(msg.rows, msg.cols)

    def _on_ping(self, msg: Ping) -> None:
        t1 = time.time()
        self.send(Pong(0, t0=msg.t0, t1=t1, t2=time.time(), version=self.agent.software))

    def _on_metrics(self, msg: MetricsRequest) -> None:
        self.answer(msg, RequestKind.METRICS, lambda: self._metrics(msg.request_id))

    def _metrics(self, rid: int) -> Message:
        if self.policy is not None and not self.policy.allows_metrics():
            self.agent.audit.record("denied", peer=self.peer, key_id=self.key_id, request=rid, what="metrics")
            return Error(rid, code=ErrorCode.PERMISSION_DENIED,
                         message=f"permission denied for key {self.key_id}: metrics not allowed")
        self.agent.audit.record("metrics", peer=self.peer, key_id=self.key_id, request=rid)
        return MetricsReply(rid, metrics=self.agent.metrics.snapshot())

    def answer(self, msg: Message, kind: RequestKind, reply: Callable[[], Message]) -> None:
        """A request answered at once by one message or an ERROR (METRICS_REQUEST,
        JOBS_LIST, JOB_KILL): its channel steps with both, then it is done and forgotten."""
        rid = msg.request_id
        if rid in self.requests:
            return self.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use", 255)
        channel = RequestChannel(Role.AGENT, rid, kind)
        channel.receive(msg)
        self.reply(channel, reply())

    def reply(self, channel: RequestChannel, msg: Message) -> None:
        """Send a frame of ours for a request, stepped through its channel first."""
        channel.send(msg)
        self.send(msg)

    def _on_goodbye(self, msg: Goodbye) -> None:
        self.abort()

    def _on_error(self, msg: Error) -> None:
        self.log.info("controller reported %s: %s", msg.code, msg.message, req=msg.request_id)

    # -- teardown ------------------------------------------------------------

    def _drop_request(self, req: Any) -> None:
        """The controller is gone: kill what it started (a detached command is a job, kept elsewhere)."""
        if isinstance(req, CommandRequest):
            req.abandon()
            req.kill(signal.SIGTERM, DISCONNECT_GRACE)
        elif hasattr(req, "abort"):
            req.abort()

    def _handshake_deadline(self) -> None:
        if self.conn.state not in (State.OPEN,) and not self.closed:
            self.agent.audit.record("refused", peer=self.peer, reason="handshake timeout")  # logged once, here
            self.abort()

    def _idle_check(self) -> None:
        if self.closed:
            return
        idle = time.monotonic() - self._last_frame
        if idle >= self.limits.idle_timeout and not self.requests:
            self.log.info("idle for %ds, closing", int(idle))
            self.goodbye("idle timeout")
            self.abort()
            return
        wait = max(1.0, self.limits.idle_timeout - idle)
        self._timers.append(asyncio.get_running_loop().call_later(wait, self._idle_check))


def peer_name(transport: asyncio.Transport) -> str:
    """`host:port` (`[v6]:port`) of the other end, or `unix`, as logs and audit records name it."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "unix"

