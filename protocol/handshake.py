"""The cryptography of the shared-key handshake and of per-frame MACs.

This module holds only the math; `connection` decides when each piece is sent.
It is pure (stdlib `hmac`, `hashlib`, `secrets`, and `cryptography`'s AES-GCM,
which does no I/O), so test vectors pin it and a third party can reimplement it
from PROTOCOL.md.

    controller                                  agent
      HELLO  nonce_c, key_id            ──▶
                                        ◀──     HELLO  nonce_a
      th = transcript_hash(hello_c, hello_a)    (the exact frame bytes both saw)
      AUTH   controller_proof(key, th)  ──▶     verify
      verify                            ◀──     AUTH   agent_proof(key, th)
      c2a, a2c = derive_session_keys(key, nonce_c, nonce_a, th)
      every later frame: head + body + mac(c2a or a2c).tag(seq, head, body)
      where mac is the algorithm the agent chose from the controller's `macs`

Why each piece is there:
- the transcript covers both HELLO frames byte for byte, so a peer that rewrote
  either (a downgraded `auth`, a swapped nonce) makes the proofs disagree;
- each proof has its own label, so an agent's proof reflected back at it, or a
  controller's at the controller, never verifies;
- fresh nonces from both sides make every session's keys new, so frames recorded
  from one session are worthless in another;
- a per-direction key plus a sequence number in every tag stops frames from being
  replayed, dropped, reordered or bounced back to their sender unnoticed;
- the MAC algorithm is negotiated inside the HELLOs, so the transcript covers the
  offer and the choice: a peer that strips the faster algorithm fails the proofs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.protocol.errors import ConfigError, LocalProtocolError
from shoal.protocol.frames import TAG_SIZE as FRAME_TAG_SIZE

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "TAG_SIZE",
    "FRAME_TAG_SIZE",
    "MAC_HMAC_SHA256",
    "MAC_AES256_GMAC",
    "SUPPORTED_MACS",
    "SharedKey",
    "SessionKeys",
    "FrameMac",
    "GmacFrameMac",
    "frame_mac",
    "new_nonce",
    "transcript_hash",
    "controller_proof",
    "agent_proof",
    "verify_proof",
    "derive_session_keys",
    "hkdf_extract",
    "hkdf_expand",
]

# A shared key carries 256 bits: the HMAC-SHA256 block keeps them all, and
# guessing is out of the question. Shorter keys are refused, not padded.
KEY_SIZE = 32
# Each side's nonce: 256 random bits, so a repeat across sessions never happens.
NONCE_SIZE = 32
# Size of an AUTH proof and of a full HMAC-SHA256 output (discovery MACs use it
# whole). Frame tags are FRAME_TAG_SIZE (16): the GMAC tag size, and HMAC-SHA256
# truncated to it as RFC 4868 does; 128 bits leave forgery at 2^-128 per try.
PROOF_SIZE = 32
TAG_SIZE = 32

# Frame MAC algorithms by their names in HELLO, in our order of preference:
# AES-GMAC runs on AES-NI at several GB/s where SHA-256 without SHA-NI manages
# ~240 MiB/s; HMAC-SHA256 stays as the fallback every peer must speak.
MAC_AES256_GMAC = "aes256-gmac"
MAC_HMAC_SHA256 = "hmac-sha256"
SUPPORTED_MACS = (MAC_AES256_GMAC, MAC_HMAC_SHA256)

# Domain-separation labels. Every use of the key hashes a different prefix, so
# no output of one step can stand in for another. Changing one is a new protocol.
_KEY_ID_LABEL = b"shoal key id v1"
_TRANSCRIPT_LABEL = b"shoal transcript v1"
_CONTROLLER_PROOF_LABEL = b"shoal controller proof v1"
_AGENT_PROOF_LABEL = b"shoal agent proof v1"
_C2A_LABEL = b"shoal c2a v1"
_A2C_LABEL = b"shoal a2c v1"

_HASH = "sha256"
_HASH_SIZE = 32
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_MAX_SEQ = 2**64 - 1
# GCM's 96-bit nonce: 4 zero bytes then u64(seq).
_NONCE_PREFIX = bytes(4)
# From this body size on, GMAC takes head and body as two AAD pieces (no join copy).
_STREAM_AAD_FROM = 256 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class SharedKey:
    """A shared secret whose bytes never show in a repr, a log line or an error.

    Args:
        secret: at least `KEY_SIZE` random bytes.

    Raises:
        ConfigError: the secret is not bytes or is too short to be safe.
    """

    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.secret, (bytes, bytearray)):
            raise ConfigError(f"a shared key must be bytes, not {type(self.secret).__name__}")
        if len(self.secret) < KEY_SIZE:
            raise ConfigError(f"a shared key must be at least {KEY_SIZE} bytes, got {len(self.secret)}")
        object.__setattr__(self, "secret", bytes(self.secret))

    @classmethod
    def generate(cls) -> SharedKey:
        """Make a fresh key from the OS's CSPRNG."""
        return cls(secrets.token_bytes(KEY_SIZE))

    @property
    def key_id(self) -> str:
        """A public name for the key: 16 hex digits that reveal nothing of it."""
        return hashlib.sha256(_KEY_ID_LABEL + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SharedKey(id={self.key_id}, <secret>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time, so comparing keys leaks nothing about either.
        if not isinstance(other, SharedKey):
            return NotImplemented
        return hmac.compare_digest(self.secret, other.secret)

    def __hash__(self) -> int:
        return hash(self.key_id)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two per-direction frame MAC keys of one session (repr masked)."""

    c2a: bytes
    a2c: bytes

    def __repr__(self) -> str:
        return "SessionKeys(<secret>)"


def new_nonce() -> bytes:
    """Return a fresh handshake nonce."""
    return secrets.token_bytes(NONCE_SIZE)


def transcript_hash(hello_c_frame: bytes, hello_a_frame: bytes) -> bytes:
    """Hash both HELLO frames exactly as sent, controller's first.

    Each frame is length-prefixed, so no choice of frame contents can make two
    different pairs hash alike by shifting bytes across the boundary.
    """
    h = hashlib.sha256(_TRANSCRIPT_LABEL)
    for frame in (hello_c_frame, hello_a_frame):
        h.update(_U32.pack(len(frame)))
        h.update(frame)
    return h.digest()


def controller_proof(key: bytes, th: bytes) -> bytes:
    """The controller's AUTH proof: it holds `key` and saw transcript `th`."""
    return hmac.digest(key, _CONTROLLER_PROOF_LABEL + th, _HASH)


def agent_proof(key: bytes, th: bytes) -> bytes:
    """The agent's AUTH proof; a different label from the controller's."""
    return hmac.digest(key, _AGENT_PROOF_LABEL + th, _HASH)


def verify_proof(expected: bytes, received: bytes) -> bool:
    """Compare proofs in constant time; a wrong length is simply a mismatch."""
    if not isinstance(received, (bytes, bytearray)) or len(received) != len(expected):
        return False
    return hmac.compare_digest(expected, received)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 section 2.2)."""
    return hmac.digest(salt or bytes(_HASH_SIZE), ikm, _HASH)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 section 2.3)."""
    if not 0 < length <= 255 * _HASH_SIZE:
        raise LocalProtocolError(f"HKDF cannot produce {length} bytes")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), _HASH)
        out += block
        counter += 1
    return out[:length]


def derive_session_keys(key: bytes, nonce_c: bytes, nonce_a: bytes, th: bytes) -> SessionKeys:
    """Derive this session's frame MAC keys, one per direction.

    Salt is both nonces (controller's first), so each session gets new keys even
    under the same shared key; the transcript in `info` binds them to the HELLOs.
    """
    prk = hkdf_extract(nonce_c + nonce_a, key)
    return SessionKeys(
        c2a=hkdf_expand(prk, _C2A_LABEL + th, KEY_SIZE),
        a2c=hkdf_expand(prk, _A2C_LABEL + th, KEY_SIZE),
    )


class FrameMac:
    """Tags and checks frames in one direction of an authenticated session.

    The tag covers the sequence number, so a frame replayed, dropped or moved is
    caught by the next check; and the whole head, so its type and request id
    cannot be rewritten. The caller keeps the sequence counter: 0 for the first
    sealed frame in each direction, plus one per frame.
    """

    __slots__ = ("_template",)

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_SIZE:
            raise LocalProtocolError(f"a frame MAC key must be at least {KEY_SIZE} bytes")
        # Keying HMAC costs two hash blocks; copying a keyed object skips that on
        # every frame.
        self._template = hmac.new(key, digestmod=_HASH)

    def __repr__(self) -> str:
        return "FrameMac(<secret>)"

    def tag(self, seq: int, frame_head: bytes, body: bytes | bytearray | memoryview) -> bytes:
        """Return the 16-byte tag (HMAC-SHA256-128) for the frame `frame_head + body`.

        The body is hashed in place (a memoryview stays a view), so a 1 MiB
        output chunk is never copied just to be authenticated.
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise LocalProtocolError(f"frame sequence number {seq} out of range")
        h = self._template.copy()
        h.update(_U64.pack(seq))
        h.update(frame_head)
        h.update(body)
        return h.digest()[:FRAME_TAG_SIZE]

    def verify(self, seq: int, frame_head: bytes, body: bytes | bytearray | memoryview, tag: bytes) -> bool:
        """Check a received frame's tag in constant time."""
        return _tag_matches(self.tag, seq, frame_head, body, tag)


_GCM: tuple[Callable[[bytes], Any], Callable[[bytes, bytes], Any]] | None = None


def _gcm() -> tuple[Callable[[bytes], Any], Callable[[bytes, bytes], Any]]:
    """cryptography's AESGCM, and a streaming GCM encryptor for (key, nonce): imported
    on first use, so sessions without a key (and `shoal run` start-up) never pay for
    it, and once, so a hub taking thousands of handshakes does not run the import
    statement for each."""
    global _GCM
    if _GCM is None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        _GCM = (AESGCM, lambda key, nonce: Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor())
    return _GCM


class GmacFrameMac:
    """The same job as FrameMac with AES-256-GMAC: GCM over an empty plaintext
    with the frame as associated data, whose 16-byte output is the tag.

    The nonce is 4 zero bytes then u64(seq). GCM must never see one nonce twice
    under one key; here each key serves one direction of one session and seq only
    grows, so no (key, nonce) pair repeats.
    """

    __slots__ = ("_aead", "_stream")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"an AES-256-GMAC key must be {KEY_SIZE} bytes")
        aesgcm, stream = _gcm()
        self._aead = aesgcm(key)
        self._stream: Callable[[bytes], Any] = lambda nonce: stream(key, nonce)

    def __repr__(self) -> str:
        return "GmacFrameMac(<secret>)"

    def tag(self, seq: int, frame_head: bytes, body: bytes | bytearray | memoryview) -> bytes:
        """Return the 16-byte GMAC tag for the frame `frame_head + body`.

        Small frames join head and body for the one-shot AESGCM call (cheapest per
        call); large ones stream them as two pieces of associated data.
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise LocalProtocolError(f"frame sequence number {seq} out of range")
        nonce = _NONCE_PREFIX + _U64.pack(seq)
        if len(body) < _STREAM_AAD_FROM:
            small: bytes = self._aead.encrypt(nonce, b"", frame_head + body)
            return small
        # Large bodies: feed head and body separately rather than copying a fresh
        # megabyte per frame just to join them.
        enc = self._stream(nonce)
        enc.authenticate_additional_data(frame_head)
        enc.authenticate_additional_data(body)
        enc.finalize()
        tag: bytes = enc.tag
        return tag

    def verify(self, seq: int, frame_head: bytes, body: bytes | bytearray | memoryview, tag: bytes) -> bool:
        """Check a received frame's tag in constant time."""
        return _tag_matches(self.tag, seq, frame_head, body, tag)


def frame_mac(name: str, key: bytes) -> FrameMac | GmacFrameMac:
    """The frame MAC for a negotiated algorithm name (one of SUPPORTED_MACS)."""
    if name == MAC_AES256_GMAC:
        return GmacFrameMac(key)
    if name == MAC_HMAC_SHA256:
        return FrameMac(key)
    raise LocalProtocolError(f"unknown frame MAC algorithm {name!r}")


def _tag_matches(
    tag_fn: Callable[[int, bytes, bytes | bytearray | memoryview], bytes],
    seq: int, frame_head: bytes, body: bytes | bytearray | memoryview, tag: bytes,
) -> bool:
    """A wrong-size or non-bytes tag is a mismatch; otherwise compare in constant time."""
    if not isinstance(tag, (bytes, bytearray)) or len(tag) != FRAME_TAG_SIZE:
        return False
    return hmac.compare_digest(tag_fn(seq, frame_head, body), tag)
