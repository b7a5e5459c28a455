"""The handshake math: a pinned test vector, then the properties the design relies on.

The vector's inputs (also printed in PROTOCOL.md, "Test vector"):
    key      = bytes 0x00..0x1f
    nonce_c  = bytes 0x20..0x3f
    nonce_a  = bytes 0x40..0x5f
    hello_c  = b"shoal test vector: controller HELLO frame"
    hello_a  = b"shoal test vector: agent HELLO frame"
    frame    = head 00000022 11 00000007 (STDIN, request 7), body b"hello, shoal\\n",
               sealed with the c2a key at sequence number 5, under each frame MAC
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.protocol import handshake
from shoal.protocol.errors import ConfigError, LocalProtocolError
from shoal.protocol.handshake import FrameMac, GmacFrameMac, SharedKey

KEY = bytes(range(0x00, 0x20))
NONCE_C = bytes(range(0x20, 0x40))
NONCE_A = bytes(range(0x40, 0x60))
HELLO_C = b"shoal test vector: controller HELLO frame"
HELLO_A = b"shoal test vector: agent HELLO frame"
HEAD = bytes.fromhex("00000022" "11" "00000007")
BODY = b"hello, shoal\n"
SEQ = 5

KEY_ID = "60191ea668c466c9"
TH = "0340808608a5a0bbf84a5e07fd395e2617d94151451ca0ea93995a36669451c8"
CONTROLLER_PROOF = "28ea4297ed5833acacd1514e61b31f68297d05d0d74fe32c8d331121fd896ae2"
AGENT_PROOF = "799e6ce5582c1ce74f43bfb35dc75ec6fa67e1504a01b7725c281dfc04f1523f"
C2A = "a83e48f65f311613bfd33889f37d286c1c908a93f9af9246926d37743090476e"
A2C = "630bf6574f68d52bb04056edd320501a474528943a12b1d7641e376feb035879"
HMAC_TAG = "a8da8bba4bd12537082c8f77ec3bd44a"
GMAC_TAG = "1f6d24d394e1f6f5b69e88fbec1b7694"
MACS = {"hmac-sha256": (FrameMac, HMAC_TAG), "aes256-gmac": (GmacFrameMac, GMAC_TAG)}


def th() -> bytes:
    return handshake.transcript_hash(HELLO_C, HELLO_A)


def session() -> handshake.SessionKeys:
    return handshake.derive_session_keys(KEY, NONCE_C, NONCE_A, th())


# -- the pinned vector ------------------------------------------------------


def test_vector_key_id() -> None:
    assert SharedKey(KEY).key_id == KEY_ID


def test_vector_transcript_hash() -> None:
    assert th().hex() == TH


def test_vector_proofs() -> None:
    assert handshake.controller_proof(KEY, th()).hex() == CONTROLLER_PROOF
    assert handshake.agent_proof(KEY, th()).hex() == AGENT_PROOF


def test_vector_session_keys() -> None:
    keys = session()
    assert (keys.c2a.hex(), keys.a2c.hex()) == (C2A, A2C)


def test_vector_frame_tags() -> None:
    assert FrameMac(session().c2a).tag(SEQ, HEAD, BODY).hex() == HMAC_TAG
    assert GmacFrameMac(session().c2a).tag(SEQ, HEAD, BODY).hex() == GMAC_TAG
    for name, (cls, tag) in MACS.items():
        assert handshake.frame_mac(name, session().c2a).tag(SEQ, HEAD, BODY).hex() == tag


def test_unknown_mac_name_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="rot13"):
        handshake.frame_mac("rot13", session().c2a)


def test_vector_matches_an_independent_reading_of_the_spec() -> None:
    """Recompute every value from the prose in PROTOCOL.md with other code."""
    transcript = hashlib.sha256(
        b"shoal transcript v1" + len(HELLO_C).to_bytes(4, "big") + HELLO_C
        + len(HELLO_A).to_bytes(4, "big") + HELLO_A
    ).digest()
    assert transcript.hex() == TH
    assert hmac.new(KEY, b"shoal agent proof v1" + transcript, "sha256").hexdigest() == AGENT_PROOF
    c2a = HKDF(hashes.SHA256(), 32, NONCE_C + NONCE_A, b"shoal c2a v1" + transcript).derive(KEY)
    a2c = HKDF(hashes.SHA256(), 32, NONCE_C + NONCE_A, b"shoal a2c v1" + transcript).derive(KEY)
    assert (c2a.hex(), a2c.hex()) == (C2A, A2C)
    tag = hmac.new(c2a, SEQ.to_bytes(8, "big") + HEAD + BODY, "sha256").hexdigest()
    assert tag[:32] == HMAC_TAG
    # GMAC through the streaming GCM interface rather than AESGCM: no plaintext,
    # head and body as associated data, nonce = 4 zero bytes || u64(seq).
    gcm = Cipher(algorithms.AES(c2a), modes.GCM(bytes(4) + SEQ.to_bytes(8, "big"))).encryptor()
    gcm.authenticate_additional_data(HEAD + BODY)
    gcm.finalize()
    assert gcm.tag.hex() == GMAC_TAG


def test_hkdf_matches_rfc5869_case_1() -> None:
    prk = handshake.hkdf_extract(bytes(range(13)), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = handshake.hkdf_expand(prk, bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_refuses_impossible_lengths() -> None:
    with pytest.raises(LocalProtocolError):
        handshake.hkdf_expand(bytes(32), b"", 255 * 32 + 1)


# -- SharedKey --------------------------------------------------------------


def test_shared_key_never_shows_its_bytes() -> None:
    key = SharedKey(KEY)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert KEY.hex() not in text and repr(KEY) not in text
        assert KEY_ID in text
    assert "<secret>" in repr(session()) and C2A not in repr(session())


def test_shared_key_too_short_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        SharedKey(bytes(31))
    with pytest.raises(ConfigError):
        SharedKey("not bytes")  # type: ignore[arg-type]


def test_generated_keys_are_fresh_and_full_size() -> None:
    a, b = SharedKey.generate(), SharedKey.generate()
    assert len(a.secret) == handshake.KEY_SIZE
    assert a != b and a.key_id != b.key_id
    assert a == SharedKey(a.secret) and hash(a) == hash(SharedKey(a.secret))


def test_shared_key_is_immutable() -> None:
    key = SharedKey(KEY)
    with pytest.raises(AttributeError):
        key.secret = bytes(32)  # type: ignore[misc]


def test_nonces_are_fresh_and_full_size() -> None:
    a, b = handshake.new_nonce(), handshake.new_nonce()
    assert len(a) == len(b) == handshake.NONCE_SIZE and a != b


# -- handshake properties ---------------------------------------------------


def test_wrong_key_fails_verify() -> None:
    wrong = bytes(range(1, 33))
    expected = handshake.controller_proof(KEY, th())
    assert handshake.verify_proof(expected, handshake.controller_proof(KEY, th()))
    assert not handshake.verify_proof(expected, handshake.controller_proof(wrong, th()))


def test_reflected_proof_fails() -> None:
    """An agent's proof sent back to it (or the controller's) never verifies."""
    cp, ap = handshake.controller_proof(KEY, th()), handshake.agent_proof(KEY, th())
    assert cp != ap
    assert not handshake.verify_proof(cp, ap)
    assert not handshake.verify_proof(ap, cp)


@pytest.mark.parametrize("received", [b"", b"\x00", bytes.fromhex(CONTROLLER_PROOF)[:31],
                                      bytes.fromhex(CONTROLLER_PROOF) + b"\x00"])
def test_proof_of_wrong_length_is_a_mismatch_not_a_crash(received: bytes) -> None:
    assert not handshake.verify_proof(bytes.fromhex(CONTROLLER_PROOF), received)


def test_transcript_changes_with_either_hello_and_order() -> None:
    base = th()
    assert handshake.transcript_hash(HELLO_C + b" ", HELLO_A) != base
    assert handshake.transcript_hash(HELLO_C, HELLO_A.replace(b"agent", b"agenT")) != base
    assert handshake.transcript_hash(HELLO_A, HELLO_C) != base
    # Moving a byte across the boundary must not collide either.
    assert handshake.transcript_hash(HELLO_C + HELLO_A[:1], HELLO_A[1:]) != base


def test_tampered_hello_makes_proofs_disagree() -> None:
    downgraded = HELLO_C.replace(b"controller", b"Controller")
    th2 = handshake.transcript_hash(downgraded, HELLO_A)
    assert not handshake.verify_proof(handshake.controller_proof(KEY, th()),
                                      handshake.controller_proof(KEY, th2))


def test_swapped_nonces_change_keys() -> None:
    swapped = handshake.derive_session_keys(KEY, NONCE_A, NONCE_C, th())
    assert swapped.c2a != session().c2a and swapped.a2c != session().a2c


def test_directions_have_distinct_keys() -> None:
    keys = session()
    assert keys.c2a != keys.a2c
    assert len(keys.c2a) == len(keys.a2c) == 32


def test_new_nonce_gives_new_keys() -> None:
    other = handshake.derive_session_keys(KEY, NONCE_C, bytes(32), th())
    assert other.c2a != session().c2a


# -- frame MAC properties ---------------------------------------------------


@pytest.fixture(params=sorted(MACS))
def mac_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sealed(mac_name: str) -> bytes:
    return HEAD + BODY + bytes.fromhex(MACS[mac_name][1])


def verify_sealed(mac_name: str, frame: bytes, seq: int = SEQ) -> bool:
    head, body, tag = frame[:9], frame[9:-16], frame[-16:]
    return handshake.frame_mac(mac_name, session().c2a).verify(seq, head, body, tag)


def test_untouched_frame_verifies(mac_name: str) -> None:
    assert verify_sealed(mac_name, sealed(mac_name))


def test_every_flipped_bit_fails_verify(mac_name: str) -> None:
    frame = sealed(mac_name)
    for i in range(len(frame)):
        for bit in range(8):
            corrupt = bytearray(frame)
            corrupt[i] ^= 1 << bit
            assert not verify_sealed(mac_name, bytes(corrupt)), (i, bit)


def test_replayed_or_reordered_seq_fails(mac_name: str) -> None:
    assert not verify_sealed(mac_name, sealed(mac_name), SEQ - 1)
    assert not verify_sealed(mac_name, sealed(mac_name), SEQ + 1)


def test_frame_reflected_to_its_sender_fails(mac_name: str) -> None:
    tag = handshake.frame_mac(mac_name, session().c2a).tag(SEQ, HEAD, BODY)
    assert not handshake.frame_mac(mac_name, session().a2c).verify(SEQ, HEAD, BODY, tag)


def test_the_two_macs_never_accept_each_others_tags() -> None:
    assert not GmacFrameMac(session().c2a).verify(SEQ, HEAD, BODY, bytes.fromhex(HMAC_TAG))
    assert not FrameMac(session().c2a).verify(SEQ, HEAD, BODY, bytes.fromhex(GMAC_TAG))


def test_truncated_or_missing_tag_fails(mac_name: str) -> None:
    mac = handshake.frame_mac(mac_name, session().c2a)
    full = bytes.fromhex(MACS[mac_name][1])
    assert not mac.verify(SEQ, HEAD, BODY, full[:15])
    assert not mac.verify(SEQ, HEAD, BODY, full + b"\x00")
    assert not mac.verify(SEQ, HEAD, BODY, b"")


def test_tag_accepts_views_without_changing_the_result() -> None:
    mac = FrameMac(session().c2a)
    big = bytes(range(256)) * 4096  # 1 MiB
    want = hmac.new(session().c2a, (0).to_bytes(8, "big") + HEAD + big, "sha256").digest()[:16]
    assert mac.tag(0, HEAD, memoryview(big)) == want
    assert mac.tag(0, HEAD, bytearray(big)) == want
    # The keyed template is copied, never consumed: a second call gives the same.
    assert mac.tag(0, HEAD, big) == want
    gmac = GmacFrameMac(session().c2a)
    want = gmac.tag(0, HEAD, big)
    assert gmac.tag(0, HEAD, memoryview(big)) == gmac.tag(0, HEAD, bytearray(big)) == want


def test_seq_out_of_range_is_refused(mac_name: str) -> None:
    mac = handshake.frame_mac(mac_name, session().c2a)
    with pytest.raises(LocalProtocolError):
        mac.tag(-1, HEAD, BODY)
    with pytest.raises(LocalProtocolError):
        mac.tag(2**64, HEAD, BODY)
    assert len(mac.tag(2**64 - 1, HEAD, BODY)) == 16 == handshake.FRAME_TAG_SIZE


def test_frame_mac_refuses_short_key_and_hides_its_key(mac_name: str) -> None:
    with pytest.raises(LocalProtocolError):
        handshake.frame_mac(mac_name, bytes(16))
    assert C2A not in repr(handshake.frame_mac(mac_name, session().c2a))
    assert "<secret>" in repr(handshake.frame_mac(mac_name, session().c2a))


def test_module_is_pure() -> None:
    """protocol must stay sans-I/O: no sockets, files, processes or logging."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(handshake))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = "shoal.protocol."
    imported |= {n.module.removeprefix(ours).split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    # cryptography is here for AES-GCM only, which does no I/O.
    assert imported <= {"__future__", "hashlib", "hmac", "secrets", "struct", "collections", "dataclasses", "typing",
                        "cryptography", "errors", "frames"}


def test_exports_exist() -> None:
    for name in handshake.__all__:
        assert hasattr(handshake, name), name


@pytest.mark.parametrize("size", [0, 1000, 256 * 1024, 1024 * 1024 + 3])
def test_gmac_tag_is_the_same_for_joined_and_streamed_associated_data(size: int) -> None:
    """Large bodies are fed to GCM in two pieces; the tag must equal the one-shot one."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shoal.protocol.handshake import GmacFrameMac

    key, head, body = bytes(range(32)), bytes(range(9)), bytes(i % 251 for i in range(size))
    expected = AESGCM(key).encrypt(bytes(4) + (7).to_bytes(8, "big"), b"", head + body)
    mac = GmacFrameMac(key)
    assert mac.tag(7, head, body) == expected
    assert mac.verify(7, head, body, expected) and not mac.verify(8, head, body, expected)
