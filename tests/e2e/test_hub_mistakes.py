"""A new hub user's first mistakes, each answered in one line with a documented status.

A port already taken, `--hub` naming the hub's config file instead of its socket, a
monitoring check or a shell started while the hub is down, `shoal hosts --hub
PATTERN` with the hub in the config file (and its groups and -x), an inventory
target the hub cannot reach, a dial-in name no hub takes, an agent without the
hub's key: what the user sees, never a traceback, silence or a misleading guess.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import closed_port, shoal
from tests.hubs import HubThread, dialers, new_key, running_hub
from tests.programs import SHOAL, SHOAL_AGENT
from tests.waiting import wait_for, wait_for_async

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The single stderr line of a command that failed at start (no traceback, nothing else)."""
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("option", ["--metrics-listen", "--listen", "--socket"])
def test_an_address_in_use_is_one_line_naming_the_option_and_exit_2(tmp_path: Path, option: str) -> None:
    sock = tmp_path / "hub.sock"
    with socket.socket() as taken, socket.socket(socket.AF_UNIX) as served:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        value = f"127.0.0.1:{port}"
        if option == "--socket":
            served.bind(str(sock))  # another hub serving this path
            served.listen()
        args = ["--socket", str(sock)] + ([option, value] if option != "--socket" else [])
        proc = subprocess.run([*SHOAL, "hub", *args], capture_output=True, timeout=30, cwd=str(REPO),
                              stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    where = f"unix:{sock}" if option == "--socket" else value
    assert _one_line_error(proc) == f"shoal: {option}: cannot listen on {where}: address already in use\n"
    if option != "--socket":
        assert not sock.exists()  # the hub that could not start left no socket behind


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to resolve in a network namespace of its own")
@pytest.mark.parametrize("option", ["--metrics-listen", "--listen"])
def test_a_host_that_does_not_resolve_is_one_line_in_words(tmp_path: Path, option: str) -> None:
    """A resolver failure carries a resolver code, not an errno: it used to read
    'unknown error -3'. The hub runs in a network namespace of its own (no interface
    up), so the lookup fails there and no query leaves this host."""
    sock = tmp_path / "hub.sock"
    proc = subprocess.run(["unshare", "--net", *SHOAL, "hub", "--socket", str(sock), "--insecure",
                           option, "nosuch.invalid:9100"], capture_output=True, timeout=30, cwd=str(REPO),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert line.startswith(f"shoal: {option}: cannot listen on nosuch.invalid:9100: ") and "unknown error" not in line
    assert "resolution" in line or "not known" in line, line
    assert not sock.exists()


@pytest.mark.parametrize("below", ["hub.sock", "sub/hub.sock"])
def test_a_socket_path_whose_directory_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path, below: str) -> None:
    """It used to be 'internal error: FileExistsError ... (a bug in shoal)' and 70."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / below
    proc = subprocess.run([*SHOAL, "hub", "--socket", str(path)], capture_output=True, timeout=30, cwd=str(REPO),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    reason = "file exists" if below == "hub.sock" else "not a directory"
    assert _one_line_error(proc) == (f"shoal: --socket: cannot listen on unix:{path}: cannot create "
                                     f"{path.parent}: {reason}\n")


def test_hub_naming_a_file_not_a_socket_says_so(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "hub.toml"
    config.write_text('listen = ["127.0.0.1:8472"]\n')
    code, out, err = shoal(capsysbinary, "run", "web1", "--hub", str(config), "--", "true")
    assert (code, out) == (255, b"")
    assert err == (f"shoal: hub {config}: not a socket but a regular file; "
                   "--hub names the socket the hub serves (its --socket)\n").encode()


def _shoal_as_nobody(argv: list[str]) -> tuple[int, bytes, bytes]:
    """`shoal argv` as uid 65534: a forked child drops to that user and runs main() it has
    already imported (no interpreter to exec, which may live where that user may not
    go, as /root/.pyenv does); its status, stdout and stderr. The child runs the command
    once as root first, its output discarded, so that every module it imports on the
    way is loaded before the files become unreadable."""
    import io
    import sys

    from shoal.controller.cli.main import main

    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 99
        try:
            os.environ.update(HOME="/nonexistent", XDG_CONFIG_HOME="/nonexistent/.config")  # nobody's config
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            main(argv)
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            status = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    with os.fdopen(out_read, "rb") as out, os.fdopen(err_read, "rb") as err:
        said, complained = out.read(), err.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), said, complained


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize("command", [["run", "web1", "--", "true"], ["hosts"]])
def test_a_hub_of_another_user_is_not_said_to_be_not_running(tmp_path: Path, command: list[str]) -> None:
    """A user reaching the root hub that `install.sh --hub` starts (its socket in a 0700
    directory) used to read 'not running (Permission denied)' about a hub that runs."""
    with HubThread(tmp_path, ["web1"]) as t:  # tmp_path is in a directory only root may enter
        status, out, err = _shoal_as_nobody([command[0], "--hub", str(t.socket), *command[1:]])
    assert (status, out) == (255, b"")
    assert err.decode() == (f"shoal: hub {t.socket}: permission denied: the socket or its directory is not this "
                            "user's (uid 65534), and a hub serves only the user it runs as\n")


@pytest.mark.parametrize("flags,status,state", [([], 2, "CRITICAL"), (["--unreachable-unknown"], 3, "UNKNOWN")])
def test_check_through_a_hub_that_is_not_running_is_a_plugin_status(  # type: ignore[no-untyped-def]
        capsysbinary, tmp_path: Path, flags: list[str], status: int, state: str) -> None:
    nohub = tmp_path / "nohub.sock"
    code, out, err = shoal(capsysbinary, "check", "web[1-3]", "--hub", str(nohub), "--warn", "cpu>90", *flags)
    # A monitoring system reads the status line on stdout and a status of 0-3, as for unreachable hosts.
    assert (code, out, err) == (status, f"SHOAL {state} - hub {nohub}: not running (no socket)\n".encode(), b"")


def test_shell_through_a_hub_that_is_not_running_is_one_line_and_exit_255(tmp_path: Path) -> None:
    nohub = tmp_path / "nohub.sock"
    proc = subprocess.run([*SHOAL, "shell", "web1,web2", "--hub", str(nohub)], capture_output=True, timeout=30,
                          cwd=str(REPO), input=b"echo never\n")
    assert (proc.returncode, proc.stdout) == (255, b"")
    assert _one_line_error(proc) == f"shoal: hub {nohub}: not running (no socket)\n"


def test_hosts_hub_with_only_a_pattern_uses_the_config_files_hub(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with HubThread(tmp_path, ["web1", "web2", "db1"]) as t:
        config = tmp_path / "config.toml"
        config.write_text(f'hub = "{t.socket}"\n')
        code, out, err = shoal(capsysbinary, "hosts", "--config", str(config), "--hub", "web[1-9]")
        assert code == 0, err
        assert [line.split("\t")[0] for line in out.decode().splitlines()] == ["web1", "web2"]
        code, out, _ = shoal(capsysbinary, "hosts", "--config", str(config), "--hub", str(t.socket), "db1", "--count")
        assert (code, out) == (0, b"1\n")  # PATH then PATTERN, as before


def test_hosts_hub_reads_groups_and_exclusions_as_run_does(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[groups.web]\nhosts = ["web[1-3]"]\n')
    with HubThread(tmp_path, ["web1", "web2", "db1"]) as t:
        hub = ["--hub", str(t.socket), "--inventory", str(inventory)]
        for argv, names in ((["@web"], "web[1-2]"), (["-x", "web1"], "db1,web2"), (["@web", "-x", "web2"], "web1")):
            code, out, err = shoal(capsysbinary, "hosts", *hub, *argv, "--fold")
            assert (code, out, err) == (0, f"{names}\n".encode(), b""), argv
        code, out, err = shoal(capsysbinary, "hosts", *hub, "web[")
        assert (code, out, err) == (2, b"", b'shoal: bad host pattern "web[": unclosed \'[\'\n')


@contextlib.contextmanager
def _hub(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], list[bytes]]]:
    """`shoal hub` running with FLAGS, and its stderr lines as they come (all of them once the block ends)."""
    hub = subprocess.Popen([*SHOAL, "hub", "--socket", str(tmp_path / "hub.sock"), *flags], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO))
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(hub.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        yield hub, lines
    finally:
        if hub.poll() is None:
            hub.kill()
        hub.wait(10)
        reader.join(10)
        hub.stderr.close()  # type: ignore[union-attr]


def _stopped(hub: subprocess.Popen[bytes]) -> int:
    hub.terminate()
    return hub.wait(30)


def test_an_inventory_target_the_hub_cannot_reach_is_logged_once(tmp_path: Path) -> None:
    port = closed_port()
    with _hub(tmp_path, "--targets", f"127.0.0.1:{port}") as (hub, lines):
        warned = wait_for(lambda: [line for line in lines if b"WARNING" in line], timeout=20,
                          what="the hub's warning about the target")
        assert warned[0].decode().endswith(f"shoal.hub: 127.0.0.1:{port}: connection refused; "
                                           "retrying with backoff (at most 30s apart)\n")
        assert _stopped(hub) == 0


def test_an_inventory_target_failing_again_and_again_is_logged_once(tmp_path: Path) -> None:
    attempts = []
    with socket.socket() as server:  # takes each connection and hangs up, again and again
        server.bind(("127.0.0.1", 0))
        server.listen()

        def refuse() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                attempts.append(1)
                conn.close()

        threading.Thread(target=refuse, daemon=True).start()
        target = f"127.0.0.1:{server.getsockname()[1]}"
        with _hub(tmp_path, "--targets", target, "--log-level", "warning") as (hub, lines):
            wait_for(lambda: len(attempts) >= 3, timeout=30, what="three attempts")  # backoff: 1 s, 2 s at most
            assert _stopped(hub) == 0
    assert len(lines) == 1 and f" WARNING shoal.hub: {target}: ".encode() in lines[0], lines


@pytest.mark.parametrize("name", ["bad name!", "127.0.0.1:8471", "web/1"])
def test_an_agent_will_not_start_with_a_name_no_hub_takes(tmp_path: Path, name: str) -> None:
    argv = [*SHOAL_AGENT, "--connect", "127.0.0.1:8472", "--name", name, "--state-dir", str(tmp_path)]
    for extra in (["--check-config"], []):
        proc = subprocess.run([*argv, *extra], capture_output=True, timeout=30, cwd=str(REPO),
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 2
        assert _one_line_error(proc).startswith(f"shoal-agent: --name: name {name!r} is not a host name")
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(f'connect = ["127.0.0.1:8472"]\nname = {json.dumps(name)}\n')
    proc = subprocess.run([*SHOAL_AGENT, "--config", str(agent_toml), "--check-config"], capture_output=True,
                          timeout=30, cwd=str(REPO))
    assert proc.returncode == 2
    assert _one_line_error(proc).startswith(f"shoal-agent: {agent_toml}:2: name {name!r} is not a host name")


async def test_an_agent_without_the_hubs_key_is_audited_once_for_what_it_said(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"

    def records() -> list[dict[str, object]]:
        return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []

    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        (keyless,) = dialers(hub, ["keyless"], None)
        await keyless.start()
        try:
            # Two attempts refused: the first one's connection has ended, and been audited, by then.
            await wait_for_async(lambda: sum(r["event"] == "auth_failed" for r in records()) >= 2, timeout=15)
        finally:
            await keyless.close()
    assert all("none configured" in str(r["reason"]) for r in records() if r["event"] == "auth_failed")
    assert [r for r in records() if r["event"] == "refused"] == []  # no guess about TLS beside it


@pytest.mark.parametrize("place", [["--connect", "192.0.2.1", "--name", "web1"], ["--listen", "0.0.0.0:8470"]])
def test_check_config_refuses_what_a_start_refuses_without_a_key(tmp_path: Path, place: list[str]) -> None:
    # Only checked, never dialled or bound: --check-config opens no socket.
    proc = subprocess.run([*SHOAL_AGENT, *place, "--state-dir", str(tmp_path), "--check-config"],
                          capture_output=True, timeout=30, cwd=str(REPO), stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert "without a key" in _one_line_error(proc) and "--insecure" in proc.stderr.decode()


@pytest.mark.parametrize("flags,line", [
    (["--fanout", "0"], "shoal: --fanout: must be 1 or more, not 0\n"),
    (["--connect-timeout", "nan"], "shoal: --connect-timeout: must be above 0, not nan\n"),
    (["--drain-grace", "-1"], "shoal: --drain-grace: must be 0 or more, not -1\n"),
    (["--drain-grace", "nan"], "shoal: --drain-grace: must be 0 or more, not nan\n"),
    (["--forget-after", "-1"], "shoal: --forget-after: must be 0 or more, not -1\n"),
    (["--hub-config", "HUB_TOML"], "shoal: HUB_TOML:1: drain_grace must be a number 0 or more, not nan\n"),
])
def test_a_bad_number_is_one_line_naming_its_option(tmp_path: Path, flags: list[str], line: str) -> None:
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text("drain_grace = nan\n")
    flags = [str(hub_toml) if f == "HUB_TOML" else f for f in flags]
    proc = subprocess.run([*SHOAL, "hub", "--socket", str(tmp_path / "hub.sock"), *flags], capture_output=True,
                          timeout=30, cwd=str(REPO), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert _one_line_error(proc) == line.replace("HUB_TOML", str(hub_toml))


def test_drain_grace_0_in_hub_toml_is_taken_as_on_the_command_line(tmp_path: Path) -> None:
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text("drain_grace = 0\n")
    with _hub(tmp_path, "--hub-config", str(hub_toml)) as (hub, lines):
        wait_for(lambda: lines, timeout=20, what="the hub's first line")
        assert b"hub serving" in lines[0]  # started (a refused setting is one line and exit 2)
        assert _stopped(hub) == 0
    assert any(b"draining: up to 0s" in line for line in lines), lines


@pytest.mark.parametrize("address", ["[::1", "[::1:9000", "[::1]9000"])
def test_an_ipv6_address_missing_its_bracket_is_one_line_naming_the_option(tmp_path: Path, address: str) -> None:
    """'[::1' used to be taken as [::1]:8472: a typo the hub should name, not guess."""
    proc = subprocess.run([*SHOAL, "hub", "--socket", str(tmp_path / "hub.sock"), "--listen", address],
                          capture_output=True, timeout=30, cwd=str(REPO), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert _one_line_error(proc) == (f"shoal: --listen: bad address {address!r} "
                                     "(expected HOST:PORT or [IPv6]:PORT)\n")
    assert not (tmp_path / "hub.sock").exists()


def test_the_start_line_says_where_the_metrics_are_served(tmp_path: Path) -> None:
    """With --metrics-listen 127.0.0.1:0 the port is the kernel's choice: the hub's first
    line is the only place an admin can read it from."""
    import urllib.request

    with _hub(tmp_path, "--metrics-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0") as (hub, lines):
        wait_for(lambda: lines, timeout=20, what="the hub's first line")
        first = lines[0].decode()
        assert "hub serving" in first and "; metrics at http://127.0.0.1:" in first, first
        url = first.split("metrics at ")[1].split(";")[0]
        with urllib.request.urlopen(url, timeout=30) as reply:  # that address does serve the scrape
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert _stopped(hub) == 0
