"""The sans-I/O connection: bytes in, typed messages out; messages in, bytes out.

Drivers (agent and controller) call `receive_data` with whatever the socket gave
them, pull messages with `next_event` until it returns None, and write whatever
`data_to_send` returns. The handshake runs inside: the application only sees a
`HandshakeComplete` event, then request messages. Until then nothing but HELLO,
AUTH and ERROR is legal, so no request can be acted on before authentication.

States (one table, `_LEGAL`):

    HELLO ──hello exchange──▶ AUTH ──proofs verified──▶ OPEN
      │ (no key on either side) ───────────────────────▶ OPEN
    any ──error──▶ FAILED (sticky)       any ──EOF──▶ CLOSED
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from shoal.protocol import handshake
from shoal.protocol.errors import AuthError, ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.frames import (DEFAULT_MAX_FRAME_SIZE, HEAD_SIZE, MAX_FRAME_SIZE_CEILING, PREAUTH_MAX_FRAME, TAG_SIZE,
                                   FrameDecoder, RawFrame, frame_head)
from shoal.protocol.codec import decode_body, encode_body
from shoal.protocol.messages import (
    AGENT_FEATURES,
    AGENT_ONLY,
    CONTROLLER_ONLY,
    PROTOCOL_VERSION,
    Auth,
    Error,
    Hello,
    Message,
    MessageType,
)

__all__ = ["Role", "State", "Connection", "HandshakeComplete", "KeyLookup"]

NONCE_SIZE = 32
# Read buffer before authentication: one largest pre-auth frame. A flood opens many
# connections at once, and glibc keeps the freed 16 KiB buffers (measured).
_PREAUTH_READ_SIZE = PREAUTH_MAX_FRAME + HEAD_SIZE + TAG_SIZE
# What the peer is told when a keyed handshake fails, whatever the cause: an unknown
# key id and a wrong proof must look alike, or the reply tells key ids apart.
AUTH_FAILED_MESSAGE = "authentication failed"


class Role(Enum):
    CONTROLLER = "controller"
    AGENT = "agent"


class State(Enum):
    HELLO = "hello"
    AUTH = "auth"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


_HANDSHAKE_TYPES = frozenset({MessageType.HELLO, MessageType.AUTH, MessageType.ERROR})
_LEGAL: dict[State, frozenset[MessageType] | None] = {
    State.HELLO: _HANDSHAKE_TYPES,
    State.AUTH: _HANDSHAKE_TYPES,
    State.OPEN: frozenset(MessageType) - {MessageType.HELLO, MessageType.AUTH},
    State.CLOSED: frozenset(),
    State.FAILED: frozenset(),
}

# What the peer may never send us: the types only our own role sends.
_OURS_ONLY: dict[Role, frozenset[MessageType]] = {Role.AGENT: AGENT_ONLY, Role.CONTROLLER: CONTROLLER_ONLY}


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The session is open. `key_id` names the key both sides proved, if any;
    `mac` the frame MAC algorithm in use (None when frames are not tagged)."""

    peer: Hello
    key_id: str | None
    mac: str | None = None


class KeyLookup:
    """The agent's keys by id; `required` means unauthenticated peers are refused."""

    def __init__(self, keys: list[handshake.SharedKey]) -> None:
        self._by_id = {k.key_id: k for k in keys}
        self._dummy_salt = secrets.token_bytes(handshake.KEY_SIZE)

    @property
    def required(self) -> bool:
        return bool(self._by_id)

    def get(self, key_id: str) -> handshake.SharedKey | None:
        return self._by_id.get(key_id)

    def dummy(self, key_id: str) -> handshake.SharedKey:
        """A stand-in for an unknown key id, the same for every connection offering it.

        The handshake runs on with it and fails at the proof, so an unknown id
        takes the same path (and about the same time) as a wrong secret.
        """
        secret = hmac.new(self._dummy_salt, key_id.encode("utf-8", "replace"), hashlib.sha256).digest()
        return handshake.SharedKey(secret)


class Connection:
    """One end of a shoal connection.

    Args:
        role: which end we are.
        key: the controller's shared key (None: no authentication).
        keys: the agent's accepted keys.
        max_frame_size: largest body we accept; announced in our HELLO.
        software: our version string, announced in HELLO.
        nonce: fixed handshake nonce, for test vectors only.
        macs: frame MAC algorithms we accept, in our order of preference; the
            controller offers them, the agent picks the first offered it knows.
        features: (agent) the `requires` names it honours, announced in HELLO
            together with AGENT_FEATURES.
        name: (agent) the name it announces in HELLO when it dialled in to a hub.
    """

    def __init__(
        self,
        role: Role,
        *,
        key: handshake.SharedKey | None = None,
        keys: KeyLookup | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        software: str = "shoal",
        nonce: bytes | None = None,
        macs: tuple[str, ...] | list[str] = handshake.SUPPORTED_MACS,
        features: tuple[str, ...] | list[str] = (),
        name: str = "",
    ) -> None:
        unknown = [m for m in macs if m not in handshake.SUPPORTED_MACS]
        if unknown or not macs:
            raise LocalProtocolError(f"frame MACs must be some of {list(handshake.SUPPORTED_MACS)}, not {list(macs)}")
        self.role = role
        self.state = State.HELLO
        self.key = key
        self._keys = keys or KeyLookup([])
        self.software = software
        self.features = sorted(features)
        self.name = name
        self.peer_hello: Hello | None = None
        self.peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self.key_id: str | None = None
        self.macs = list(macs)
        self.mac: str | None = None
        self._nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_SIZE)
        self._max_frame_size = max_frame_size
        # Until the handshake is done only small frames are legal (PREAUTH_MAX_FRAME).
        self._decoder = FrameDecoder(min(max_frame_size, PREAUTH_MAX_FRAME), read_size=_PREAUTH_READ_SIZE)
        self._decoder.max_read_size = _PREAUTH_READ_SIZE
        self._key_unknown = False
        self._out: list[bytes] = []
        self._events: deque[Message | HandshakeComplete] = deque()
        self._error: RemoteProtocolError | AuthError | None = None
        self._our_hello_frame = b""
        self._their_hello_frame = b""
        self._send_mac: handshake.FrameMac | handshake.GmacFrameMac | None = None
        self._recv_mac: handshake.FrameMac | handshake.GmacFrameMac | None = None
        self._send_seq = 0
        self._recv_seq = 0

    # -- public API ----------------------------------------------------------

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    def start(self) -> None:
        """Controller only: queue our HELLO. The agent answers one in kind."""
        if self.role is not Role.CONTROLLER or self._our_hello_frame:
            raise LocalProtocolError("only the controller starts the handshake, once")
        auth = "hmac-sha256" if self.key else "none"
        key_id = self.key.key_id if self.key else ""
        self._send_hello(auth, key_id)

    def send(self, msg: Message) -> None:
        """Queue an application message; legal only once the session is open."""
        if self.state is not State.OPEN and not (isinstance(msg, Error)):
            raise LocalProtocolError(f"cannot send {msg.TYPE.name} in state {self.state.value}")
        if msg.RAW and len(msg.data) > self.peer_max_frame:  # type: ignore[attr-defined]
            raise LocalProtocolError(f"{msg.TYPE.name} of {len(msg.data)} bytes exceeds the peer's frame limit")  # type: ignore[attr-defined]
        self._emit(msg)

    def send_data(self, type_: MessageType, request_id: int, data: bytes) -> None:
        """Queue a raw-data frame without building a message object (hot path)."""
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send {type_.name} in state {self.state.value}")
        self._emit_raw(type_, request_id, data)

    def data_to_send(self) -> list[bytes]:
        """Take the buffers queued for the peer, in order (empty when none)."""
        out, self._out = self._out, []
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; `b""` means the peer closed its side."""
        self._decoder.feed(data)

    def get_buffer(self, size_hint: int = -1) -> memoryview:
        """Space for the transport to read into (see FrameDecoder.get_buffer)."""
        return self._decoder.get_buffer(size_hint)

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` from the peer were written into the last `get_buffer()` view."""
        self._decoder.buffer_updated(nbytes)

    def next_event(self) -> Message | HandshakeComplete | None:
        """Return the next event, or None when more bytes are needed.

        Raises RemoteProtocolError (or AuthError during the handshake) when the
        peer broke the protocol; the error is sticky and an ERROR frame for the
        peer is already queued in `data_to_send`.
        """
        if self._error is not None:
            raise self._error
        while not self._events:
            try:
                frame = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                self._fail(exc)
            if frame is None:
                if self._decoder.at_eof and self.state is not State.FAILED:
                    self.state = State.CLOSED
                return None
            self._handle_frame(frame)
        return self._events.popleft()

    def fail(self, code: str, message: str) -> None:
        """Queue an ERROR for the peer and stop; the driver then closes."""
        if self.state not in (State.FAILED, State.CLOSED):
            self._emit(Error(0, code=code, message=message))
        self.state = State.FAILED

    # -- frames in -----------------------------------------------------------

    def _handle_frame(self, frame: RawFrame) -> None:
        if self._recv_mac is not None:
            self._check_tag(frame)
        legal = _LEGAL[self.state]
        if legal is None or frame.type not in legal:
            name = MessageType(frame.type).name if frame.type in MessageType._value2member_map_ else f"0x{frame.type:02x}"
            code = ErrorCode.UNKNOWN_TYPE if name.startswith("0x") else ErrorCode.OUT_OF_ORDER
            self._fail(RemoteProtocolError(f"{name} not allowed in state {self.state.value}", code))
        if frame.type in _OURS_ONLY[self.role]:
            self._fail(RemoteProtocolError(
                f"{MessageType(frame.type).name} is sent only by the {self.role.value}, never to it",
                ErrorCode.WRONG_DIRECTION))
        try:
            msg = decode_body(frame.type, frame.request_id, frame.body)
        except RemoteProtocolError as exc:
            self._fail(exc)
        if self.state is State.OPEN:
            self._events.append(msg)
        else:
            self._handshake_step(msg, frame)

    def _check_tag(self, frame: RawFrame) -> None:
        assert self._recv_mac is not None and frame.tag is not None
        if not self._recv_mac.verify(self._recv_seq, frame.head, frame.body, frame.tag):
            self._fail(RemoteProtocolError(
                f"frame {self._recv_seq} failed its MAC check (tampered, replayed, reordered or reflected)",
                ErrorCode.BAD_MAC,
            ))
        self._recv_seq += 1

    # -- handshake -----------------------------------------------------------

    def _handshake_step(self, msg: Message, frame: RawFrame) -> None:
        if isinstance(msg, Error):
            if msg.code == ErrorCode.AUTH_FAILED:
                self._auth_fail(msg.message or "authentication failed", None, queue=False)
            self._fail(RemoteProtocolError(f"peer reported {msg.code}: {msg.message}", msg.code), queue=False)
        if isinstance(msg, Hello):
            self._on_hello(msg, frame)
        elif isinstance(msg, Auth):
            self._on_auth(msg)

    def _on_hello(self, hello: Hello, frame: RawFrame) -> None:
        expected_role = "agent" if self.role is Role.CONTROLLER else "controller"
        if self.peer_hello is not None or self.state is not State.HELLO:
            self._fail(RemoteProtocolError("second HELLO", ErrorCode.OUT_OF_ORDER))
        if hello.role != expected_role:
            self._fail(RemoteProtocolError(f"peer says it is a {hello.role}, expected a {expected_role}",
                                           ErrorCode.BAD_HELLO))
        if hello.protocol != PROTOCOL_VERSION:
            self._fail(RemoteProtocolError(
                f"protocol version {hello.protocol} not supported (this end speaks {PROTOCOL_VERSION})",
                ErrorCode.VERSION))
        self.peer_hello = hello
        if hello.max_frame:
            self.peer_max_frame = min(hello.max_frame, MAX_FRAME_SIZE_CEILING)
        self._their_hello_frame = frame.head + frame.body
        if self.role is Role.AGENT:
            self._agent_on_hello(hello)
        else:
            self._controller_on_hello(hello)

    def _agent_on_hello(self, hello: Hello) -> None:
        if hello.auth == "none":
            if self._keys.required:
                self._auth_fail("this agent requires a key but the controller offered none", None)
            self._send_hello("none", "")
            return self._open(None)
        if not self._keys.required:
            self._auth_fail("the controller offered a key but this agent has none configured", hello.key_id)
        self._require_nonce(hello)
        # An unknown key id gets a HELLO like any other and fails at the proof (§5.2):
        # answering it differently would tell a prober which key ids exist.
        key = self._keys.get(hello.key_id)
        self._key_unknown = key is None
        self.key = key if key is not None else self._keys.dummy(hello.key_id)
        self.key_id = hello.key_id
        self.mac = self._choose_mac(hello.macs)
        self._send_hello("hmac-sha256", hello.key_id)
        self.state = State.AUTH

    def _choose_mac(self, offered: list[str]) -> str:
        """Agent: the controller's first offer that we accept."""
        for name in offered:
            if name in self.macs:
                return name
        self._fail(RemoteProtocolError(
            f"no frame MAC in common: the controller offered {offered}, this agent accepts {self.macs}",
            ErrorCode.BAD_HELLO))

    def _controller_on_hello(self, hello: Hello) -> None:
        if self.key is None:
            if hello.auth != "none":
                self._auth_fail("the agent requires a key but none is configured here", hello.key_id or None, queue=False)
            return self._open(None)
        if hello.auth != "hmac-sha256":
            self._auth_fail("a key is configured here but the agent has none (it offered no authentication)", None, queue=False)
        self._require_nonce(hello)
        chosen = hello.mac or handshake.MAC_HMAC_SHA256
        if chosen not in self.macs:
            self._fail(RemoteProtocolError(f"the agent chose frame MAC {chosen!r}, which was not offered",
                                           ErrorCode.BAD_HELLO))
        self.mac = chosen
        self.key_id = self.key.key_id
        th = self._transcript()
        self._emit(Auth(0, proof=handshake.controller_proof(self.key.secret, th).hex()))
        self.state = State.AUTH

    def _on_auth(self, auth: Auth) -> None:
        if self.state is not State.AUTH or self.key is None:
            self._fail(RemoteProtocolError("AUTH before HELLO", ErrorCode.OUT_OF_ORDER))
        th = self._transcript()
        secret = self.key.secret
        if self.role is Role.AGENT:
            expected = handshake.controller_proof(secret, th)
        else:
            expected = handshake.agent_proof(secret, th)
        proof_ok = handshake.verify_proof(expected, _unhex(auth.proof))
        if self._key_unknown or not proof_ok:
            local = "unknown key id" if self._key_unknown else "bad proof (wrong key)"
            self._auth_fail(local, self.key_id, queue=self.role is Role.AGENT, peer_reason=AUTH_FAILED_MESSAGE)
        if self.role is Role.AGENT:
            self._emit(Auth(0, proof=handshake.agent_proof(secret, th).hex()))
        self._install_keys(secret, th)
        self._open(self.key_id)

    def _install_keys(self, secret: bytes, th: bytes) -> None:
        assert self.peer_hello is not None
        ours, theirs = bytes.fromhex(self._our_hello_nonce), _unhex(self.peer_hello.nonce)
        nonce_c, nonce_a = (ours, theirs) if self.role is Role.CONTROLLER else (theirs, ours)
        keys = handshake.derive_session_keys(secret, nonce_c, nonce_a, th)
        send, recv = (keys.c2a, keys.a2c) if self.role is Role.CONTROLLER else (keys.a2c, keys.c2a)
        assert self.mac is not None
        self._send_mac = handshake.frame_mac(self.mac, send)
        self._recv_mac = handshake.frame_mac(self.mac, recv)
        self._decoder.tagged = True

    def _open(self, key_id: str | None) -> None:
        assert self.peer_hello is not None
        self.state = State.OPEN
        self._decoder.max_body = self._max_frame_size  # large frames and reads only once authenticated
        self._decoder.max_read_size = FrameDecoder.READ_SIZE
        self._events.append(HandshakeComplete(self.peer_hello, key_id, self.mac if key_id else None))

    def _transcript(self) -> bytes:
        if self.role is Role.CONTROLLER:
            return handshake.transcript_hash(self._our_hello_frame, self._their_hello_frame)
        return handshake.transcript_hash(self._their_hello_frame, self._our_hello_frame)

    def _require_nonce(self, hello: Hello) -> None:
        """Refuse a nonce that is not 32 bytes, is one byte repeated, or reflects ours (§5.2)."""
        nonce = _unhex(hello.nonce)
        if len(nonce) != NONCE_SIZE:
            self._fail(RemoteProtocolError("HELLO carries no valid nonce", ErrorCode.BAD_HELLO))
        if nonce == bytes([nonce[0]]) * NONCE_SIZE:
            self._fail(RemoteProtocolError("HELLO nonce is one byte repeated, not random", ErrorCode.BAD_HELLO))
        if nonce == self._nonce:
            self._fail(RemoteProtocolError("HELLO nonce equals ours (reflected)", ErrorCode.BAD_HELLO))

    def _send_hello(self, auth: str, key_id: str) -> None:
        self._our_hello_nonce = self._nonce.hex() if auth != "none" else ""
        keyed, controller = auth != "none", self.role is Role.CONTROLLER
        hello = Hello(
            0, role=self.role.value, software=self.software, auth=auth, key_id=key_id,
            nonce=self._our_hello_nonce, max_frame=self._max_frame_size,
            macs=list(self.macs) if keyed and controller else [],
            mac=(self.mac or "") if keyed and not controller else "",
            features=[] if controller else sorted(set(AGENT_FEATURES) | set(self.features)),
            name="" if controller else self.name,
        )
        self._emit(hello)
        self._our_hello_frame = b"".join(self._out[-2:])

    # -- frames out ----------------------------------------------------------

    def _emit(self, msg: Message) -> None:
        self._emit_raw(msg.TYPE, msg.request_id, encode_body(msg))

    def _emit_raw(self, type_: int, request_id: int, body: bytes) -> None:
        mac = self._send_mac
        head = frame_head(type_, request_id, len(body), mac is not None)
        self._out.append(head)
        self._out.append(body)
        if mac is not None:
            self._out.append(mac.tag(self._send_seq, head, body))
            self._send_seq += 1

    # -- failure -------------------------------------------------------------

    def _auth_fail(self, reason: str, key_id: str | None, queue: bool = True,
                   peer_reason: str | None = None) -> NoReturn:
        """Fail the handshake; the peer gets `peer_reason` (default `reason`), our log `reason`."""
        err = AuthError(reason, key_id=key_id)
        if queue:
            self.fail(ErrorCode.AUTH_FAILED, peer_reason or reason)
        self.state = State.FAILED
        self._error = err
        raise err

    def _fail(self, exc: RemoteProtocolError, queue: bool = True) -> NoReturn:
        if queue:
            self.fail(exc.code, str(exc))
        self.state = State.FAILED
        self._error = exc
        raise exc


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""

