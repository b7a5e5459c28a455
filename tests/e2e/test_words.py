"""shoal's options stop at the command: every word from the command's first on is the
command's, whatever it looks like (controller/cli/words.py), driven through `shoal run`
against a real agent."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from shoal.controller.cli.main import build_parser
from shoal.controller.cli.words import split_at_command
from tests.agents import AgentThread, shoal
from tests.programs import SHOAL


def _run_parser() -> argparse.ArgumentParser:
    _, sub = build_parser("run")
    assert sub is not None
    return sub


# Every option string `shoal run` has, read from its parser, so a new option is covered too.
RUN_OPTIONS = sorted(s for action in _run_parser()._actions for s in action.option_strings)


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 2}


def test_the_option_list_is_complete() -> None:
    assert {"-n", "-x", "-t", "-o", "-h", "--argv", "--script", "--key-file"} <= set(RUN_OPTIONS)


@pytest.mark.parametrize("option", RUN_OPTIONS)
def test_every_run_option_after_the_command_reaches_the_command(
        agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes], option: str) -> None:
    host = agents.addresses[0]  # also a value: `-x HOST` once dropped the host from the run
    status, out, err = shoal(capsysbinary, "run", "-n", host, "printf", "%s.", option, host)
    assert (status, out, err) == (0, f"{option}.{host}.".encode(), b"")


def test_a_second_host_named_after_the_command_stays_in_the_run(
        agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    first, second = agents.addresses
    status, out, _ = shoal(capsysbinary, "run", "-n", "-o", "gather", f"{first},{second}",
                           "echo", "grep", "-x", first, "zz")
    assert status == 0 and out.splitlines()[1].endswith(b" (2)")
    assert out.splitlines()[3:] == [f"grep -x {first} zz".encode()]


def test_options_still_go_before_and_between_targets_and_command(
        agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    first, second = agents.addresses
    status, out, _ = shoal(capsysbinary, "run", "-x", second, "-n", f"{first},{second}",
                           "-q", "--argv", "-o", "stream", "printf", "%s;", "-o", "$HOME")
    assert (status, out) == (0, f"{first}: -o;$HOME;\n".encode())


def test_double_dash_still_starts_the_command_and_only_the_first_is_dropped(
        agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--", "printf", "%s.", "--", "-n")
    assert (status, out) == (0, b"--.-n.")


def test_installed_shoal_runs_sed_dash_n(agents: AgentThread, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("first\nsecond\n")
    done = subprocess.run([*SHOAL, "run", agents.addresses[0], "sed", "-n", "1p", str(tmp_path / "f")],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"first\n", b"")


def test_demo_command_keeps_its_options(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = shoal(capsysbinary, "demo", "--agents", "1", "printf", "%s.", "--agents", "2")
    assert status == 0 and out == b"demo1: --agents.2.\n"


@pytest.mark.parametrize("argv, options, command", [
    (["H", "df", "-h", "/"], ["H"], ["df", "-h", "/"]),
    (["-t", "5", "H", "x"], ["-t", "5", "H"], ["x"]),
    (["H", "-nt", "5", "x", "-n"], ["H", "-nt", "5"], ["x", "-n"]),
    (["H", "-nt5", "x"], ["H", "-nt5"], ["x"]),
    (["H", "--time", "5", "x"], ["H", "--time", "5"], ["x"]),  # argparse's abbreviation
    (["H", "--timeout=5", "x"], ["H", "--timeout=5"], ["x"]),
    (["-x", "web1", "web[1-2]", "echo", "-x", "web1"], ["-x", "web1", "web[1-2]"], ["echo", "-x", "web1"]),
    (["H", "--", "--x"], ["H"], ["--x"]),
    (["H", "--bogus", "x"], ["H", "--bogus"], ["x"]),
    (["H", "-nZ", "x"], ["H", "-nZ"], ["x"]),  # unknown letter: argparse will say so
    (["H"], ["H"], []),
])
def test_split_at_command(argv: list[str], options: list[str], command: list[str]) -> None:
    assert split_at_command(_run_parser(), argv) == (options, command)
