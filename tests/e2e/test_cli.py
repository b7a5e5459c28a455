"""`shoal` called in-process (main(argv)) and as installed commands: what a user sees."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from tests.agents import shoal
from tests.waiting import wait_for
from tests.programs import installed


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 3}


def test_single_host_exit_code_is_the_commands(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--", "echo hi; exit 3")
    assert status == 3 and out == b"hi\n"


def test_signal_death_is_128_plus_n(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    status, _, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--", "kill -TERM $$")
    assert status == 128 + 15


def test_raw_single_host_output_is_byte_exact(agents, capsysbinary, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b.bin").write_bytes(os.urandom(50000))
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--", f"tar c -C {tmp_path} a.txt b.bin")
    assert status == 0
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert sorted(tar.getnames()) == ["a.txt", "b.bin"]
        member = tar.extractfile("b.bin")
        assert member is not None and member.read() == (tmp_path / "b.bin").read_bytes()


def test_many_hosts_get_prefixed_lines_and_a_summary(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "--", "printf 'one\\ntwo'")
    assert status == 0
    lines = out.decode().splitlines()
    for address in agents.addresses:
        assert f"{address}: one" in lines and f"{address}: two" in lines  # partial last line still printed
    assert "3 ok" in err.decode()


def test_stderr_lines_go_to_stderr(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    spec = ",".join(agents.addresses[:2])
    status, out, err = shoal(capsysbinary, "run", spec, "-n", "--", "echo oops >&2")
    assert b"oops" not in out and err.count(b": oops") == 2


def test_invalid_utf8_is_replaced_only_for_display(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    spec = ",".join(agents.addresses[:2])
    status, out, _ = shoal(capsysbinary, "run", spec, "-n", "--", "printf 'a\\377b\\n'")
    assert status == 0 and "a\ufffdb".encode() in out


def test_unreachable_host_is_reported_and_others_still_print(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    spec = f"{agents.addresses[0]},127.0.0.1:1"
    status, out, err = shoal(capsysbinary, "run", spec, "-n", "--", "echo alive")
    assert status == 255
    assert f"{agents.addresses[0]}: alive".encode() in out
    assert b"127.0.0.1:1: unreachable: connection refused" in err
    assert b"1 unreachable" in err


def test_argv_mode_passes_words_without_a_shell(agents, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--argv", "--", "echo", "$HOME", "a;b")
    assert status == 0 and out == b"$HOME a;b\n"


@pytest.mark.parametrize("argv, needle", [
    (["run", "web[1-", "--", "true"], b"web[1-"),
    (["run", "127.0.0.1:99999", "--", "true"], b"99999"),
    (["run", "127.0.0.1"], b"no command"),
])
def test_bad_input_is_one_line_and_exit_2(capsysbinary, argv, needle) -> None:  # type: ignore[no-untyped-def]
    status, _, err = shoal(capsysbinary, *argv)
    assert status == 2
    assert err.count(b"\n") == 1 and err.startswith(b"shoal:") and needle in err


def test_demo_runs_three_agents_and_cleans_up(capsysbinary) -> None:  # type: ignore[no-untyped-def]
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    status, out, err = shoal(capsysbinary, "demo")
    assert status == 0
    for name in ("demo1", "demo2", "demo3"):
        assert f"{name}: tick 3".encode() in out
    assert b"3 ok" in err
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_installed_commands_run_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real entry points, as a user types them: agent process + controller process."""
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen([installed("shoal-agent"), "--listen", f"unix:{sock}"],
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(sock), timeout=15, what="the agent's socket")
        data = os.urandom(200000)
        proc = subprocess.run([installed("shoal"), "run", f"unix:{sock}", "--", "sha256sum"],
                              input=data, capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    finally:
        agent.terminate()
        assert agent.wait(15) == 0


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from shoal.controller.cli.main import main

    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(__import__("shoal.controller.cli.main", fromlist=["SUBCOMMANDS"]).SUBCOMMANDS))
def test_help_never_points_at_source_files(capsys: pytest.CaptureFixture[str], name: str) -> None:
    # An installed shoal has no controller/ folder to read: help must say it itself.
    import re

    text = _help(capsys, name)
    assert not re.search(r"\b[\w/]+\.py\b|\b(controller|agent|protocol)/", text), text


def test_run_help_gives_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "run").split())
    assert "Exit status:" in text
    for part in ("largest host status", "128+N", "255 when a host was unreachable", "2 bad usage",
                 "70 internal error", "130 interrupted"):
        assert part in text, part


@pytest.mark.parametrize("argv", [
    ["run", "-n", "--hub", "/nonexistent/hub.sock", "web1", "--", "true"],  # the one-host hub run's form
    ["run", "-n", "127.0.0.1:1", "--", "true"],
])
def test_a_closed_stdout_is_one_line_and_exit_2(argv: list[str]) -> None:
    """fd 1 closed before shoal starts (`>&-`): Python has no sys.stdout at all, and
    both the short hub path and the full program used to end in a traceback."""
    proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", installed("shoal"), *argv],
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        2, b"shoal: standard output is closed (to discard the output, redirect it to /dev/null)\n")
