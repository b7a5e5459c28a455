"""Key files: created private, refused when others can reach them, never leaking bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shoal.hostio.keyfile import format_key, load_key_file, write_key_file
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_raw(path: Path, text: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(text)
    path.chmod(mode)
    return path


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "shoal.key"
    key = write_key_file(path)
    assert load_key_file(path) == key
    assert load_key_file(str(path)).key_id == key.key_id


def test_written_file_is_private_and_in_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "shoal.key"
    old = os.umask(0)  # even with a permissive umask
    try:
        key = write_key_file(path)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    assert path.read_text() == f"shoal-key-v1 {key.secret.hex()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["shoal.key"]  # no temp file left


def test_given_key_is_written(tmp_path: Path) -> None:
    key = SharedKey(bytes(range(32)))
    assert write_key_file(tmp_path / "k", key) is key
    assert (tmp_path / "k").read_text() == format_key(key)


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "shoal.key", b"precious\n")
    with pytest.raises(ConfigError, match="already exists") as info:
        write_key_file(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["shoal.key"]


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "shoal.key"
    with pytest.raises(ConfigError, match="cannot create key file") as info:
        write_key_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666])
def test_file_others_can_reach_is_refused_like_ssh(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "shoal.key"
    key = write_key_file(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_key_file(path)
    text = str(info.value)
    assert "accessible by others" in text
    assert f"(mode {mode:04o})" in text
    assert f"run chmod 600 {path}" in text
    assert key.secret.hex() not in text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_file_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "shoal.key"
    key = write_key_file(path)
    path.chmod(mode)
    assert load_key_file(path) == key


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(ConfigError, match="no such key file") as info:
        load_key_file(path)
    assert info.value.where == str(path)


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dir"
    path.mkdir(mode=0o700)
    with pytest.raises(ConfigError) as info:
        load_key_file(path)
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "shoal.key"
    write_key_file(path)
    path.chmod(0o000)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="cannot open key file"):
            load_key_file(path)
        return
    # Root reads any file, so play an unprivileged agent for the length of the call.
    os.seteuid(65534)
    try:
        with pytest.raises(ConfigError, match="cannot open key file"):
            load_key_file(path)
    finally:
        os.seteuid(0)


SECRET_HEX = "ab" * 32


@pytest.mark.parametrize("content, complaint", [
    (b"", "empty"),
    (f"shoal-key-v1 {SECRET_HEX}".encode(), None),  # final newline optional
    (f"shoal-key-v2 {SECRET_HEX}\n".encode(), "not a shoal key file"),
    (f"{SECRET_HEX}\n".encode(), "not a shoal key file"),
    (f"shoal-key-v1 {SECRET_HEX[:-2]}\n".encode(), "malformed key"),
    (f"shoal-key-v1 {SECRET_HEX}00\n".encode(), "malformed key"),
    (f"shoal-key-v1 {SECRET_HEX[:-1]}g\n".encode(), "malformed key"),
    (f"shoal-key-v1 {SECRET_HEX} extra\n".encode(), "not a shoal key file"),
    (f"shoal-key-v1 {SECRET_HEX}\nshoal-key-v1 {SECRET_HEX}\n".encode(), "2 lines"),
    (b"-----BEGIN PRIVATE KEY-----\n" + SECRET_HEX.encode() + b"\n-----END PRIVATE KEY-----\n", "3 lines"),
    (b"\xffshoal-key-v1\n", "not ASCII"),
    (b"x" * 10000, "too large"),
])
def test_bad_content_is_refused_without_echoing_it(tmp_path: Path, content: bytes, complaint: str | None) -> None:
    path = write_raw(tmp_path / "shoal.key", content)
    if complaint is None:
        assert load_key_file(path).secret == bytes.fromhex(SECRET_HEX)
        return
    with pytest.raises(ConfigError, match=complaint) as info:
        load_key_file(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert SECRET_HEX[:16] not in text


def test_format_key_refuses_keys_the_format_cannot_hold() -> None:
    with pytest.raises(ConfigError):
        format_key(SharedKey(bytes(48)))


def test_loaded_key_repr_is_masked(tmp_path: Path) -> None:
    write_key_file(tmp_path / "k")
    key = load_key_file(tmp_path / "k")
    assert key.secret.hex() not in repr(key) and key.key_id in repr(key)
