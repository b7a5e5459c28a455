"""Discovery datagrams: the probe a controller sends over UDP and the reply an agent gives.

Pure like the rest of `protocol`: bytes in, typed values out. The spec is the
"Discovery" section of PROTOCOL.md. Why it is shaped this way:

- A probe is always `PROBE_SIZE` bytes and a reply can never be longer
  (`MAX_REPLY_SIZE`), so a forged source address earns an attacker no
  amplification: the victim receives at most what the attacker sent.
- A keyed probe names a key id and carries an HMAC over its nonce, so an agent
  answers it only for a controller holding that key; the reply's HMAC covers the
  probe's nonce and every reply field, so a reply forged without the key, or
  recorded from an earlier probe (a different nonce), does not verify.
- The MAC key is derived from the shared key with HKDF under its own label, so
  no discovery MAC can ever stand in for a handshake proof or a frame tag.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from shoal.protocol.errors import LocalProtocolError, RemoteProtocolError
from shoal.protocol.handshake import KEY_SIZE, NONCE_SIZE, TAG_SIZE, SharedKey, hkdf_expand, hkdf_extract, verify_proof

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_GROUP",
    "DEFAULT_GROUP6",
    "MAGIC",
    "VERSION",
    "PROBE_SIZE",
    "MAX_REPLY_SIZE",
    "MAX_NAME_BYTES",
    "MAX_VERSION_BYTES",
    "Probe",
    "Reply",
    "encode_probe",
    "encode_reply",
    "decode_probe",
    "decode_reply",
    "fit_utf8",
]

#: UDP port agents answer on unless configured otherwise (the TCP default's number).
DEFAULT_PORT = 8470
#: Multicast group agents listening on all interfaces join; administratively
#: scoped (RFC 2365), so routers do not carry it beyond the site.
DEFAULT_GROUP = "239.255.84.70"
#: IPv6 group agents listening on all IPv6 interfaces join on every interface.
#: Link-local scope (ff02::/16), so it never leaves the link; the group id
#: 0x84708470 is in RFC 3307's range for groups a host picks for itself.
DEFAULT_GROUP6 = "ff02::8470:8470"

MAGIC = b"SHDV"
VERSION = 1
KIND_PROBE = 1
KIND_REPLY = 2
FLAG_KEYED = 0x01

# Key ids are 16 hex digits (`SharedKey.key_id`): 8 bytes on the wire.
KEY_ID_SIZE = 8
# A DNS name's limit; the agent's configured name is held to it as well.
MAX_NAME_BYTES = 253
# Version strings are short ("shoal-agent/1.2.3"); longer ones are cut.
MAX_VERSION_BYTES = 64
# Every probe is this long, zero-padded after its fields: it must be at least
# as long as the longest reply (see MAX_REPLY_SIZE) so replies never amplify.
PROBE_SIZE = 512

# magic | version u8 | kind u8 | flags u8 | reserved u8 | nonce | key id
_HEAD = struct.Struct(f">4sBBBB{NONCE_SIZE}s{KEY_ID_SIZE}s")
_PORT = struct.Struct(">H")
_PROBE_FIELDS = _HEAD.size + TAG_SIZE
MAX_REPLY_SIZE = _HEAD.size + _PORT.size + 1 + MAX_NAME_BYTES + 1 + MAX_VERSION_BYTES + TAG_SIZE
assert MAX_REPLY_SIZE <= PROBE_SIZE

_PROBE_LABEL = b"shoal discovery probe v1"
_REPLY_LABEL = b"shoal discovery reply v1"
_KEY_LABEL = b"shoal discovery key v1"
_NO_KEY_ID = bytes(KEY_ID_SIZE)


def _mac_key(key: SharedKey) -> bytes:
    """The discovery MAC key: HKDF of the shared key under the discovery label."""
    return hkdf_expand(hkdf_extract(b"", key.secret), _KEY_LABEL, KEY_SIZE)


def _mac(key: SharedKey, label: bytes, signed: bytes) -> bytes:
    return hmac.digest(_mac_key(key), label + signed, hashlib.sha256)


def _key_id_bytes(key: SharedKey) -> bytes:
    return bytes.fromhex(key.key_id)


def fit_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes without splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _check_head(data: bytes, kind: int) -> tuple[int, bytes, bytes]:
    """Validate magic, version and kind; return (flags, nonce, key id bytes)."""
    if len(data) < _HEAD.size:
        raise RemoteProtocolError(f"discovery datagram too short ({len(data)} bytes)")
    magic, version, got_kind, flags, reserved, nonce, key_id = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RemoteProtocolError("not a shoal discovery datagram (bad magic)")
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported discovery version {version}")
    if got_kind != kind:
        raise RemoteProtocolError(f"unexpected discovery datagram kind {got_kind}")
    if flags & ~FLAG_KEYED or reserved:
        raise RemoteProtocolError("unknown discovery flags")
    keyed = bool(flags & FLAG_KEYED)
    if keyed == (key_id == _NO_KEY_ID):
        raise RemoteProtocolError("discovery key id does not match the keyed flag")
    return flags, nonce, key_id


# -- probe -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    """A parsed probe; `key_id` is None for an unauthenticated one."""

    nonce: bytes
    key_id: str | None
    mac: bytes
    signed: bytes

    def verify(self, key: SharedKey) -> bool:
        """Whether the probe was made with `key` (constant-time compare)."""
        if self.key_id is None or self.key_id != key.key_id:
            return False
        return verify_proof(_mac(key, _PROBE_LABEL, self.signed), self.mac)


def encode_probe(nonce: bytes, key: SharedKey | None = None) -> bytes:
    """A `PROBE_SIZE`-byte probe, MAC'd with `key` when one is given."""
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"a discovery nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    flags = FLAG_KEYED if key is not None else 0
    head = _HEAD.pack(MAGIC, VERSION, KIND_PROBE, flags, 0, nonce,
                      _key_id_bytes(key) if key is not None else _NO_KEY_ID)
    mac = _mac(key, _PROBE_LABEL, head) if key is not None else bytes(TAG_SIZE)
    return (head + mac).ljust(PROBE_SIZE, b"\0")


def decode_probe(data: bytes) -> Probe:
    """Parse a probe; RemoteProtocolError for anything that is not a well-formed one.

    A short probe is refused even if its fields are intact: answering it would
    let a reply outgrow the datagram that caused it.
    """
    if len(data) != PROBE_SIZE:
        raise RemoteProtocolError(f"discovery probe must be {PROBE_SIZE} bytes, got {len(data)}")
    flags, nonce, key_id = _check_head(data, KIND_PROBE)
    if any(data[_PROBE_FIELDS:]):
        raise RemoteProtocolError("discovery probe padding is not zero")
    keyed = bool(flags & FLAG_KEYED)
    return Probe(nonce, key_id.hex() if keyed else None, bytes(data[_HEAD.size:_PROBE_FIELDS]),
                 bytes(data[:_HEAD.size]))


# -- reply -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed reply. `key_id` is None for an unauthenticated one (no MAC).

    `name` and `version` are the agent's to choose and reach us unverified
    unless the reply is keyed and `verify` passes.
    """

    nonce: bytes
    key_id: str | None
    port: int
    name: str
    version: str
    mac: bytes
    signed: bytes

    def verify(self, key: SharedKey) -> bool:
        """Whether the reply was made with `key`, for the probe carrying its nonce."""
        if self.key_id is None or self.key_id != key.key_id:
            return False
        return verify_proof(_mac(key, _REPLY_LABEL, self.signed), self.mac)


def _text_field(text: str, limit: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise LocalProtocolError(f"discovery {what} is {len(raw)} bytes, at most {limit} fit")
    return bytes([len(raw)]) + raw


def encode_reply(nonce: bytes, port: int, name: str, version: str, key: SharedKey | None = None) -> bytes:
    """A reply to the probe with `nonce`; MAC'd with `key` (the probe's) when given.

    Raises LocalProtocolError when a field does not fit; `fit_utf8` cuts text first.
    """
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"a discovery nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    if not 0 <= port <= 0xFFFF:
        raise LocalProtocolError(f"discovery port {port} out of range")
    flags = FLAG_KEYED if key is not None else 0
    signed = b"".join([
        _HEAD.pack(MAGIC, VERSION, KIND_REPLY, flags, 0, nonce,
                   _key_id_bytes(key) if key is not None else _NO_KEY_ID),
        _PORT.pack(port), _text_field(name, MAX_NAME_BYTES, "name"),
        _text_field(version, MAX_VERSION_BYTES, "version"),
    ])
    return signed + _mac(key, _REPLY_LABEL, signed) if key is not None else signed


def _read_text(data: bytes, pos: int, limit: int, what: str) -> tuple[str, int]:
    if pos >= len(data):
        raise RemoteProtocolError(f"discovery reply ends before its {what}")
    size = data[pos]
    end = pos + 1 + size
    if size > limit or end > len(data):
        raise RemoteProtocolError(f"discovery reply {what} is malformed")
    try:
        return data[pos + 1:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"discovery reply {what} is not UTF-8") from None


def decode_reply(data: bytes) -> Reply:
    """Parse a reply; RemoteProtocolError for a malformed one or trailing bytes."""
    if len(data) > MAX_REPLY_SIZE:
        raise RemoteProtocolError(f"discovery reply too long ({len(data)} bytes)")
    flags, nonce, key_id = _check_head(data, KIND_REPLY)
    if len(data) < _HEAD.size + _PORT.size:
        raise RemoteProtocolError("discovery reply ends before its port")
    (port,) = _PORT.unpack_from(data, _HEAD.size)
    name, pos = _read_text(data, _HEAD.size + _PORT.size, MAX_NAME_BYTES, "name")
    version, pos = _read_text(data, pos, MAX_VERSION_BYTES, "version")
    keyed = bool(flags & FLAG_KEYED)
    mac = data[pos:]
    if len(mac) != (TAG_SIZE if keyed else 0):
        raise RemoteProtocolError("discovery reply has a wrong-sized MAC or trailing bytes")
    return Reply(nonce, key_id.hex() if keyed else None, port, name, version, bytes(mac), bytes(data[:pos]))
