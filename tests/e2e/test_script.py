"""`shoal run --script FILE [-- ARGS]`: a local script run on each host from stdin."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.controller.cli.main import main
from shoal.controller.script import interpreter_argv
from shoal.protocol.errors import ConfigError
from tests.agents import AgentThread


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 2}


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    status = main(["run", *argv])
    out, err = capsysbinary.readouterr()
    return status, out.decode(), err.decode()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "script"
    path.write_text(text)
    return str(path)


def test_arguments_reach_the_script_whole_and_its_status_is_ours(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    script = write(tmp_path, 'echo "$# args: [$1] [$2]"\nexit 7\n')
    status, out, _ = run(capsysbinary, agents.targets_spec(), "--script", script, "--", "a b", "c*")
    assert status == 7
    assert sorted(out.splitlines()) == sorted(f"{h}: 2 args: [a b] [c*]" for h in agents.addresses)


def test_a_multi_line_script_runs_top_to_bottom_with_functions_and_loops(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    script = write(tmp_path, "#!/bin/sh\nsay() { echo \"step $1\"; }\nfor i in 1 2 3; do\n  say $i\ndone\n")
    status, out, _ = run(capsysbinary, agents.addresses[0], "--script", script)
    assert (status, out) == (0, "step 1\nstep 2\nstep 3\n")


def test_a_shebang_picks_a_non_shell_interpreter(agents: AgentThread, tmp_path: Path,
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    script = write(tmp_path, "#!/usr/bin/env python3\nimport sys\nprint('py', sys.argv[1:])\nsys.exit(3)\n")
    status, out, _ = run(capsysbinary, agents.addresses[0], "--script", script, "--", "x", "y z")
    assert (status, out) == (3, "py ['x', 'y z']\n")


def test_a_missing_script_is_a_usage_error_naming_it(tmp_path: Path,
                                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, "127.0.0.1:1", "--script", str(tmp_path / "nope.sh"))
    assert (status, out) == (2, "")
    assert err == f"shoal: {tmp_path / 'nope.sh'}: cannot read script: No such file or directory\n"


@pytest.mark.parametrize(("first_line", "argv"), [
    (b"echo hi", ["/bin/sh", "-s", "--", "A"]),
    (b"#!/bin/bash -e", ["/bin/bash", "-e", "-s", "--", "A"]),
    (b"#!/usr/bin/env zsh", ["/usr/bin/env", "zsh", "-s", "--", "A"]),
    (b"#!/usr/bin/perl -w", ["/usr/bin/perl", "-w", "-", "A"]),
])
def test_interpreter_argv(first_line: bytes, argv: list[str]) -> None:
    assert interpreter_argv(first_line + b"\n", ["A"], "s") == argv


def test_an_empty_shebang_names_the_script_line() -> None:
    with pytest.raises(ConfigError) as info:
        interpreter_argv(b"#!\necho\n", [], "s.sh")
    assert info.value.where == "s.sh:1"
