"""Two sans-I/O endpoints back to back in memory: handshake, legality, MAC rules."""

from __future__ import annotations

import pytest

from shoal.protocol.connection import Connection, HandshakeComplete, KeyLookup, Role, State
from shoal.protocol.errors import AuthError, LocalProtocolError, RemoteProtocolError
from shoal.protocol.handshake import MAC_AES256_GMAC, MAC_HMAC_SHA256, SUPPORTED_MACS, SharedKey
from shoal.protocol.codec import decode_body, encode_body
from shoal.protocol.messageclass import replace
from shoal.protocol.messages import Exec, Hello, MessageType, Stdin, Stdout
from shoal.protocol.frames import HEAD_SIZE, PREAUTH_MAX_FRAME, TAG_SIZE, frame_head

# Fixed nonces for hand-made HELLOs: distinct bytes, so the degenerate-nonce rule passes.
NONCE_AB = bytes(range(32)).hex()
NONCE_CD = bytes(range(32, 64)).hex()

KEY = SharedKey(bytes(range(32)))
OTHER = SharedKey(bytes(range(1, 33)))


def pump(src: Connection, dst: Connection) -> list[object]:
    """Move src's queued bytes into dst and collect dst's events."""
    data = b"".join(src.data_to_send())
    if data:  # b"" would mean end of stream
        dst.receive_data(data)
    events = []
    while (ev := dst.next_event()) is not None:
        events.append(ev)
    return events


@pytest.fixture(params=SUPPORTED_MACS)
def mac(request: pytest.FixtureRequest) -> str:
    """Run a test under each frame MAC: the controller offers only that one."""
    return str(request.param)


def pair(ckey: SharedKey | None, akeys: list[SharedKey], cmacs: tuple[str, ...] = SUPPORTED_MACS,
         amacs: tuple[str, ...] = SUPPORTED_MACS) -> tuple[Connection, Connection, list[object], list[object]]:
    c = Connection(Role.CONTROLLER, key=ckey, macs=cmacs)
    a = Connection(Role.AGENT, keys=KeyLookup(akeys), macs=amacs)
    c.start()
    a_events = pump(c, a)
    c_events = pump(a, c)
    a_events += pump(c, a)
    c_events += pump(a, c)
    return c, a, c_events, a_events


def test_no_key_handshake_opens_both_sides() -> None:
    c, a, ce, ae = pair(None, [])
    assert c.state is State.OPEN and a.state is State.OPEN
    assert isinstance(ce[0], HandshakeComplete) and isinstance(ae[0], HandshakeComplete)
    assert ae[0].key_id is None


def test_hmac_handshake_then_sealed_messages_flow_both_ways(mac: str) -> None:
    c, a, ce, ae = pair(KEY, [KEY], cmacs=(mac,))
    assert ae == [HandshakeComplete(ae[0].peer, KEY.key_id, mac)]
    assert ce == [HandshakeComplete(ce[0].peer, KEY.key_id, mac)]
    c.send(Exec(1, shell="true"))
    assert pump(c, a) == [Exec(1, shell="true")]
    a.send_data(MessageType.STDOUT, 1, b"out")
    wire = b"".join(a.data_to_send())
    assert len(wire) == HEAD_SIZE + 3 + TAG_SIZE == HEAD_SIZE + 3 + 16
    c.receive_data(wire)
    assert c.next_event() == Stdout(1, b"out")


def test_gmac_is_preferred_when_both_ends_speak_it() -> None:
    c, a, ce, ae = pair(KEY, [KEY])
    assert c.mac == a.mac == MAC_AES256_GMAC
    assert ce[0].peer.mac == MAC_AES256_GMAC and ae[0].peer.macs == [MAC_AES256_GMAC, MAC_HMAC_SHA256]


def test_agent_picks_the_first_offer_it_accepts() -> None:
    c, a, _, _ = pair(KEY, [KEY], amacs=(MAC_HMAC_SHA256,))
    assert c.mac == a.mac == MAC_HMAC_SHA256 and c.state is a.state is State.OPEN
    c, a, _, _ = pair(KEY, [KEY], cmacs=(MAC_HMAC_SHA256, MAC_AES256_GMAC))
    assert c.mac == a.mac == MAC_HMAC_SHA256


def test_unauthenticated_sessions_negotiate_no_mac() -> None:
    c, a, ce, ae = pair(None, [])
    assert ce[0].mac is ae[0].mac is None and ae[0].peer.macs == []


def hello_frame(hello: Hello) -> bytes:
    return raw(MessageType.HELLO, 0, encode_body(hello))


def test_controller_hello_without_macs_means_hmac() -> None:
    """An older controller sends no `macs`: the agent falls back to hmac-sha256."""
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    body = encode_body(Hello(0, auth="hmac-sha256", key_id=KEY.key_id, nonce=NONCE_AB)).replace(
        b',"macs":["hmac-sha256"],"mac":""', b"")
    assert b'"macs"' not in body and b'"mac"' not in body
    a.receive_data(raw(MessageType.HELLO, 0, body))
    assert a.next_event() is None and a.mac == MAC_HMAC_SHA256
    [_, reply] = a.data_to_send()
    assert decode_body(MessageType.HELLO, 0, reply).mac == MAC_HMAC_SHA256  # type: ignore[attr-defined]


def test_no_mac_in_common_is_a_clear_hello_error() -> None:
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]), macs=(MAC_HMAC_SHA256,))
    a.receive_data(hello_frame(Hello(0, auth="hmac-sha256", key_id=KEY.key_id, nonce=NONCE_AB,
                                     macs=["aes256-gmac", "rot13"])))
    with pytest.raises(RemoteProtocolError, match="no frame MAC in common") as err:
        a.next_event()
    assert err.value.code == "bad_hello"


def test_agent_choosing_a_mac_not_offered_is_rejected() -> None:
    c = Connection(Role.CONTROLLER, key=KEY, macs=(MAC_HMAC_SHA256,))
    c.start()
    c.data_to_send()
    c.receive_data(hello_frame(Hello(0, role="agent", auth="hmac-sha256", key_id=KEY.key_id,
                                     nonce=NONCE_CD, macs=[], mac=MAC_AES256_GMAC)))
    with pytest.raises(RemoteProtocolError, match="not offered") as err:
        c.next_event()
    assert err.value.code == "bad_hello"


def rewrite_hello(wire: bytes, **changes: object) -> bytes:
    """What a man in the middle does: re-encode a HELLO frame with fields changed."""
    hello = decode_body(MessageType.HELLO, 0, wire[HEAD_SIZE:])
    return hello_frame(replace(hello, **changes))  # type: ignore[arg-type]


def test_downgraded_offer_fails_authentication() -> None:
    """Stripping aes256-gmac from the controller's offer makes the agent pick
    hmac-sha256, but the transcripts differ and the controller's proof fails."""
    c = Connection(Role.CONTROLLER, key=KEY)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    a.receive_data(rewrite_hello(b"".join(c.data_to_send()), macs=[MAC_HMAC_SHA256]))
    assert a.next_event() is None and a.mac == MAC_HMAC_SHA256
    assert pump(a, c) == [] and c.mac == MAC_HMAC_SHA256  # the choice is among its offers
    with pytest.raises(AuthError):
        pump(c, a)
    assert a.state is State.FAILED


def test_downgraded_choice_fails_authentication() -> None:
    c = Connection(Role.CONTROLLER, key=KEY)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    pump(c, a)
    c.receive_data(rewrite_hello(b"".join(a.data_to_send()), mac=MAC_HMAC_SHA256))
    assert c.next_event() is None and c.mac == MAC_HMAC_SHA256
    with pytest.raises(AuthError):
        pump(c, a)
    assert a.state is State.FAILED and c.state is not State.OPEN


def test_wrong_key_fails_on_both_sides() -> None:
    c = Connection(Role.CONTROLLER, key=OTHER)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    pump(c, a)  # an unknown key id still gets the agent's HELLO
    pump(a, c)
    with pytest.raises(AuthError, match="unknown key id"):
        pump(c, a)  # ...and fails at the proof
    with pytest.raises(AuthError, match="^authentication failed$"):
        pump(a, c)  # the agent's ERROR frame says no more than that


def _failed_handshake(agent_keys: dict[str, SharedKey], controller_key: SharedKey) -> tuple[Hello, bytes, str]:
    """Run a handshake that fails: (the agent's HELLO, its ERROR frame, its local reason)."""
    c = Connection(Role.CONTROLLER, key=controller_key)
    a = Connection(Role.AGENT, keys=KeyLookup([]))
    a._keys._by_id.update(agent_keys)
    c.start()
    pump(c, a)
    hello_wire = b"".join(a.data_to_send())
    c.receive_data(hello_wire)
    assert c.next_event() is None
    with pytest.raises(AuthError) as local:
        pump(c, a)
    hello = decode_body(MessageType.HELLO, 0, hello_wire[HEAD_SIZE:])
    assert isinstance(hello, Hello)
    return hello, b"".join(a.data_to_send()), local.value.reason


def test_unknown_key_id_and_wrong_secret_look_alike_to_the_controller() -> None:
    """Issue 13 point 10: the handshake must not tell which key ids an agent knows."""
    unknown = _failed_handshake({KEY.key_id: KEY}, OTHER)
    wrong_secret = _failed_handshake({OTHER.key_id: KEY}, OTHER)  # id known, secret not
    for hello in (unknown[0], wrong_secret[0]):
        assert hello.auth == "hmac-sha256" and hello.key_id == OTHER.key_id and hello.mac
    same = dict(nonce="")
    assert replace(unknown[0], **same) == replace(wrong_secret[0], **same)
    assert unknown[1] == wrong_secret[1]  # byte for byte the same ERROR
    assert unknown[2] == "unknown key id" and wrong_secret[2].startswith("bad proof")


@pytest.mark.parametrize("nonce", [bytes(32), b"\x07" * 32, None], ids=["zero", "one-byte", "reflected"])
def test_degenerate_nonces_are_refused(nonce: bytes | None) -> None:
    """Issue 13 point 11: an all-zero, one-byte or reflected nonce is not a nonce."""
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]), nonce=bytes(range(64, 96)))
    value = (nonce if nonce is not None else bytes(range(64, 96))).hex()
    a.receive_data(hello_frame(Hello(0, auth="hmac-sha256", key_id=KEY.key_id, nonce=value)))
    with pytest.raises(RemoteProtocolError, match="nonce") as exc:
        a.next_event()
    assert exc.value.code == "bad_hello" and a.state is State.FAILED


def test_controller_refuses_an_agent_reflecting_its_nonce() -> None:
    c = Connection(Role.CONTROLLER, key=KEY)
    c.start()
    ours = decode_body(MessageType.HELLO, 0, b"".join(c.data_to_send())[HEAD_SIZE:])
    assert isinstance(ours, Hello)
    c.receive_data(hello_frame(Hello(0, role="agent", auth="hmac-sha256", key_id=KEY.key_id,
                                     nonce=ours.nonce, mac=MAC_HMAC_SHA256)))
    with pytest.raises(RemoteProtocolError, match="reflected"):
        c.next_event()


def test_a_pre_auth_frame_over_the_limit_is_refused_from_its_length_alone() -> None:
    """Issue 13 point 2: 4 bytes declaring a big HELLO end the connection; nothing is buffered."""
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    a.receive_data(frame_head(MessageType.HELLO, 0, PREAUTH_MAX_FRAME + 1, False)[:4])
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 4096") as exc:
        a.next_event()
    assert exc.value.code == "frame_too_large"
    assert len(a.get_buffer()) < 64 * 1024  # no room was made for the declared body


def test_reads_stay_small_until_authenticated() -> None:
    """Filling every read offered grows the next one, but not for an unauthenticated peer."""
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    for _ in range(4):
        a.buffer_updated(len(a.get_buffer()))  # as if the peer filled all it was offered
        a._decoder._start = a._decoder._end = 0  # unparsed: only the size of the next read matters
    assert len(a.get_buffer()) <= PREAUTH_MAX_FRAME + 64  # one largest pre-auth frame


def test_the_full_frame_limit_applies_once_authenticated(mac: str) -> None:
    c = Connection(Role.CONTROLLER, key=KEY, macs=[mac])
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    pump(c, a), pump(a, c), pump(c, a), pump(a, c)
    assert a.state is State.OPEN
    c.send(Stdin(1, data=bytes(PREAUTH_MAX_FRAME * 4)))
    events = pump(c, a)
    assert isinstance(events[0], Stdin) and len(events[0].data) == PREAUTH_MAX_FRAME * 4


def test_same_key_id_but_wrong_secret_fails_at_the_proof() -> None:
    c = Connection(Role.CONTROLLER, key=OTHER)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    a._keys._by_id[OTHER.key_id] = KEY  # an attacker who knows the id but not the key
    c.start()
    pump(c, a)
    pump(a, c)
    with pytest.raises(AuthError):
        pump(c, a)
    assert a.state is State.FAILED


def test_key_on_controller_only_is_a_clear_mismatch() -> None:
    c = Connection(Role.CONTROLLER, key=KEY)
    a = Connection(Role.AGENT)
    c.start()
    with pytest.raises(AuthError, match="agent has none"):
        pump(c, a)
    with pytest.raises(AuthError):
        pump(a, c)


def test_key_on_agent_only_is_a_clear_mismatch() -> None:
    c = Connection(Role.CONTROLLER)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    with pytest.raises(AuthError, match="requires a key"):
        pump(c, a)
    with pytest.raises(AuthError):
        pump(a, c)


def raw(type_: int, rid: int, body: bytes) -> bytes:
    return frame_head(type_, rid, len(body), False) + body


def test_exec_before_handshake_is_never_delivered() -> None:
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    a.receive_data(raw(MessageType.EXEC, 1, encode_body(Exec(1, shell="touch /tmp/x"))))
    with pytest.raises(RemoteProtocolError):
        a.next_event()
    assert a.state is State.FAILED


def test_exec_between_hello_and_auth_is_never_delivered() -> None:
    c = Connection(Role.CONTROLLER, key=KEY)
    a = Connection(Role.AGENT, keys=KeyLookup([KEY]))
    c.start()
    pump(c, a)
    a.receive_data(raw(MessageType.EXEC, 1, encode_body(Exec(1, shell="touch /tmp/x"))))
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_errors_are_sticky() -> None:
    a = Connection(Role.AGENT)
    a.receive_data(b"\x00\x00\x00\x05\x7f\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        a.next_event()
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_cannot_send_requests_before_open() -> None:
    c = Connection(Role.CONTROLLER, key=KEY)
    with pytest.raises(LocalProtocolError):
        c.send(Exec(1, shell="true"))


def test_second_hello_after_open_is_rejected() -> None:
    c, a, _, _ = pair(None, [])
    a.receive_data(raw(MessageType.HELLO, 0, encode_body(Hello(0))))
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_unsupported_version_is_rejected() -> None:
    a = Connection(Role.AGENT)
    a.receive_data(raw(MessageType.HELLO, 0, encode_body(Hello(0, protocol=99))))
    with pytest.raises(RemoteProtocolError) as err:
        a.next_event()
    assert err.value.code == "version"


def sealed_pair(mac: str) -> tuple[Connection, Connection]:
    c, a, _, _ = pair(KEY, [KEY], cmacs=(mac,))
    assert c.mac == a.mac == mac
    return c, a


def test_replayed_frame_within_a_session_is_rejected(mac: str) -> None:
    c, a = sealed_pair(mac)
    c.send(Exec(1, shell="true"))
    wire = b"".join(c.data_to_send())
    a.receive_data(wire)
    assert a.next_event() == Exec(1, shell="true")
    a.receive_data(wire)
    with pytest.raises(RemoteProtocolError) as err:
        a.next_event()
    assert err.value.code == "bad_mac"


def test_reordered_frames_are_rejected(mac: str) -> None:
    c, a = sealed_pair(mac)
    c.send(Exec(1, shell="true"))
    first = b"".join(c.data_to_send())
    c.send(Exec(2, shell="true"))
    second = b"".join(c.data_to_send())
    a.receive_data(second + first)
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_reflected_frame_is_rejected(mac: str) -> None:
    c, a = sealed_pair(mac)
    c.send(Exec(1, shell="true"))
    wire = b"".join(c.data_to_send())
    c.receive_data(wire)  # sent back to its own sender
    with pytest.raises(RemoteProtocolError):
        c.next_event()


def test_frame_from_an_earlier_session_is_rejected(mac: str) -> None:
    c1, a1 = sealed_pair(mac)
    c1.send(Exec(1, shell="true"))
    old = b"".join(c1.data_to_send())
    c2, a2 = sealed_pair(mac)
    a2.receive_data(old)
    with pytest.raises(RemoteProtocolError):
        a2.next_event()


@pytest.mark.parametrize("where", ["header", "body", "tag"])
def test_flipped_bit_is_rejected(where: str, mac: str) -> None:
    c, a = sealed_pair(mac)
    c.send(Exec(1, shell="true"))
    wire = bytearray(b"".join(c.data_to_send()))
    index = {"header": 5, "body": 12, "tag": len(wire) - 1}[where]
    wire[index] ^= 0x01
    a.receive_data(bytes(wire))
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_missing_mac_is_rejected(mac: str) -> None:
    c, a = sealed_pair(mac)
    a.receive_data(raw(MessageType.EXEC, 1, encode_body(Exec(1, shell="true"))))
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_truncated_sealed_frame_at_eof_is_rejected(mac: str) -> None:
    c, a = sealed_pair(mac)
    c.send(Exec(1, shell="true"))
    wire = b"".join(c.data_to_send())
    a.receive_data(wire[:-5])
    assert a.next_event() is None
    a.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        a.next_event()


def test_garbage_yields_messages_or_protocol_errors_only() -> None:
    import random

    rng = random.Random(99)
    for role in (Role.AGENT, Role.CONTROLLER):
        for _ in range(300):
            conn = Connection(role)
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
            if rng.random() < 0.5:  # a plausible head makes the parser go deeper
                blob = frame_head(rng.choice([1, 2, 3, 0x10, 0x21]), rng.randint(0, 3), len(blob), False) + blob
            conn.receive_data(blob)
            try:
                while conn.next_event() is not None:
                    pass
            except (RemoteProtocolError, AuthError):
                pass
