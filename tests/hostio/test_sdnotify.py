"""sd_notify: the datagram systemd would receive, on a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.hostio.sdnotify import notify


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notification socket."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def test_unset_socket_means_not_under_systemd() -> None:
    assert "NOTIFY_SOCKET" not in os.environ  # cleaned by conftest
    assert notify("READY=1") is False


def test_ready_reaches_a_path_socket(receiver: tuple[socket.socket, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1") is True
    assert notify("STATUS=listening on 127.0.0.1:8470\nMAINPID=1") is True
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STATUS=listening on 127.0.0.1:8470\nMAINPID=1"


def test_at_sign_means_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"shoal-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_unreachable_socket_returns_false_instead_of_raising(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text


def test_socket_that_is_not_a_unix_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative.sock")
    assert notify("READY=1") is False
