"""Display's colour rule: only on a terminal; NO_COLOR counts only when set and non-empty
(no-color.org); --color=always beats it, --color=never beats a terminal."""

from __future__ import annotations

import os
import pty
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from shoal.controller.term.display import Display


@pytest.fixture
def terminal() -> Iterator[BinaryIO]:
    master, slave = pty.openpty()
    with os.fdopen(slave, "wb") as stream:
        yield stream
    os.close(master)


def test_a_terminal_gets_colour(terminal: BinaryIO) -> None:
    assert Display(terminal, terminal).color


def test_empty_no_color_does_not_count(terminal: BinaryIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "")
    assert Display(terminal, terminal).color


def test_no_color_turns_auto_off(terminal: BinaryIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert not Display(terminal, terminal).color


def test_forced_colour_beats_no_color_and_a_pipe(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    r, w = os.pipe()
    with os.fdopen(r, "rb"), os.fdopen(w, "wb") as pipe:
        assert Display(pipe, pipe, color=True).paint("x", "1") == "\x1b[1mx\x1b[0m"
        assert not Display(pipe, pipe).color


def test_never_beats_a_terminal(terminal: BinaryIO) -> None:
    assert not Display(terminal, terminal, color=False).color


def test_cli_color_always_beats_no_color(monkeypatch: pytest.MonkeyPatch,
                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from tests.agents import shoal

    monkeypatch.setenv("NO_COLOR", "1")
    status, _, err = shoal(capsysbinary, "hosts", "--color=always", "web[1-")
    assert status == 2 and err.startswith(b"\x1b[1;31mshoal:\x1b[0m ")
