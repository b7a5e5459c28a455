"""`shoal put` and `shoal get` in-process and as real processes: what the user sees
(stderr lines, exit statuses, files on disk) and the progress line on a terminal."""

from __future__ import annotations

import os
import select
import pty
import subprocess
from pathlib import Path

import pytest

from shoal.controller.term.display import Display
from shoal.controller.get import host_directory_name
from shoal.controller.term.transferprogress import TransferProgress, format_bytes, format_duration
from tests.agents import AgentThread, shoal, closed_port
from tests.programs import SHOAL



@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 3}


def test_put_one_file_to_three_hosts(agents: AgentThread, tmp_path: Path,
                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "app.conf").write_bytes(b"setting = 1\n")
    status, out, err = shoal(capsysbinary, "put", agents.targets_spec(), str(tmp_path / "app.conf"),
                             str(tmp_path / "deployed.conf"))
    assert (status, out) == (0, b"")
    assert err.startswith(b"shoal: 3 ok, 0 failed, 0 unreachable in ")
    assert (tmp_path / "deployed.conf").read_bytes() == b"setting = 1\n"


def test_trailing_slash_and_several_sources_mean_into(agents: AgentThread, tmp_path: Path,
                                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "dest").mkdir()
    status, _, _ = shoal(capsysbinary, "put", agents.addresses[0], str(tmp_path / "a"), str(tmp_path / "dest") + "/")
    assert status == 0 and (tmp_path / "dest" / "a").read_bytes() == b"a"
    status, _, _ = shoal(capsysbinary, "put", agents.addresses[0], str(tmp_path / "a"), str(tmp_path / "b"),
                         str(tmp_path / "dest"))
    assert status == 0 and (tmp_path / "dest" / "b").read_bytes() == b"b"
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], str(tmp_path / "a"), str(tmp_path / "b"),
                           str(tmp_path / "nodir"))
    assert status == 1 and err == f"shoal: {agents.addresses[0]}: {tmp_path}/nodir: no such file or directory\n".encode()


def test_recursive_put_copies_the_tree_with_modes(agents: AgentThread, tmp_path: Path,
                                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    tree = tmp_path / "site"
    (tree / "static" / "img").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "index.html").write_bytes(b"<html>")
    (tree / "static" / "img" / "logo.png").write_bytes(os.urandom(70_000))
    (tree / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(tree / "run.sh", 0o750)
    os.chmod(tree / "static", 0o711)
    (tree / "link").symlink_to("index.html")
    (tmp_path / "www").mkdir()
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], "-r", str(tree), str(tmp_path / "www"))
    assert status == 0, err
    assert err == (f"shoal: warning: skipping {tree}/link: symbolic link\n"
                   f"{agents.addresses[0]}: 3 sent, 0 skipped, 68.4 KiB\n").encode()
    copy = tmp_path / "www" / "site"
    found = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    assert found == ["empty", "index.html", "run.sh", "static", "static/img", "static/img/logo.png"]
    assert (copy / "static" / "img" / "logo.png").read_bytes() == (tree / "static" / "img" / "logo.png").read_bytes()
    assert (copy / "run.sh").stat().st_mode & 0o777 == 0o750
    assert (copy / "static").stat().st_mode & 0o777 == 0o711
    # Into a path that does not exist yet: it is created and, without a trailing
    # slash on the source, holds the tree by its name (rsync's rule).
    status, _, _ = shoal(capsysbinary, "put", agents.addresses[0], "-r", str(tree), str(tmp_path / "renamed"))
    assert status == 0 and (tmp_path / "renamed" / "site" / "index.html").read_bytes() == b"<html>"


def test_local_problems_stop_before_any_host(agents: AgentThread, tmp_path: Path,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "d").mkdir()
    status, _, err = shoal(capsysbinary, "put", agents.targets_spec(), str(tmp_path / "missing"), "/tmp/x")
    assert (status, err) == (1, f"shoal: {tmp_path}/missing: no such file or directory\n".encode())
    status, _, err = shoal(capsysbinary, "put", agents.targets_spec(), str(tmp_path / "d"), "/tmp/x")
    assert (status, err) == (1, f"shoal: {tmp_path}/d: is a directory (use -r to copy directories)\n".encode())
    status, _, err = shoal(capsysbinary, "put", agents.targets_spec(), str(tmp_path / "d"), "relative")
    assert (status, err) == (2, b"shoal: put: remote path must be absolute: relative\n")


def test_get_lands_in_one_directory_per_host(agents: AgentThread, tmp_path: Path,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    data = os.urandom(1_500_000)
    (tmp_path / "log.bin").write_bytes(data)
    status, out, err = shoal(capsysbinary, "get", agents.targets_spec(), str(tmp_path / "log.bin"), str(tmp_path / "out"))
    assert (status, out) == (0, b"") and err.startswith(b"shoal: 3 ok")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(agents.addresses)
    for address in agents.addresses:
        assert (tmp_path / "out" / address / "log.bin").read_bytes() == data


def test_get_failures_are_per_host_with_statuses(agents: AgentThread, tmp_path: Path,
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    gone = f"127.0.0.1:{closed_port()}"
    one = agents.addresses[0]
    status, _, err = shoal(capsysbinary, "get", one, str(tmp_path / "nope"), str(tmp_path / "out"))
    assert (status, err) == (1, f"shoal: {one}: {tmp_path}/nope: no such file or directory\n".encode())
    status, _, err = shoal(capsysbinary, "get", one, str(tmp_path), str(tmp_path / "out"))
    assert (status, err) == (1, f"shoal: {one}: {tmp_path}: is a directory\n".encode())
    status, _, err = shoal(capsysbinary, "get", f"{one},{gone}", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert status == 255
    assert sorted(err.splitlines()[:2]) == sorted([f"shoal: {gone}: connection refused".encode(),
                                                   f"shoal: {one}: {tmp_path}/nope: no such file or directory".encode()])
    assert err.splitlines()[2].startswith(b"shoal: 0 ok, 1 failed")
    assert not (tmp_path / "out").exists()  # nothing arrived, so no host directory either


def test_host_directory_names_never_collide() -> None:
    names = ["unix:/run/a.sock", "unix:%2Frun%2Fa.sock", ".", "..", "web01", "%"]
    escaped = [host_directory_name(n) for n in names]
    assert len(set(escaped)) == len(names)
    assert all("/" not in e and e not in (".", "..", "") for e in escaped)
    assert host_directory_name("unix:/run/a.sock") == "unix:%2Frun%2Fa.sock"


def test_progress_line_counts_all_hosts_on_a_terminal() -> None:
    master, slave = pty.openpty()
    now = [0.0]
    with os.fdopen(slave, "wb", buffering=0) as stderr, open(os.devnull, "wb") as stdout:
        display = Display(stdout=stdout, stderr=stderr)  # type: ignore[arg-type]
        progress = TransferProgress(display, hosts=4, clock=lambda: now[0])
        progress.expect(4 * 100 * 1024 * 1024)
        progress.advance(10 * 1024 * 1024)  # too early: nothing drawn yet
        now[0] = 2.0
        progress.advance(90 * 1024 * 1024)  # 100 MiB in 2 s over all hosts
        progress.close()
        expected = b"\r\x1b[K100.0 MiB / 400.0 MiB  25%  50.0 MiB/s  ETA 0:06  4 hosts\r\x1b[K"
        drawn = b""
        while len(drawn) < len(expected):  # a pty may hand the writes over in pieces
            ready, _, _ = select.select([master], [], [], 5)
            if not ready:
                break
            drawn += os.read(master, 4096)
    os.close(master)
    assert drawn == expected


def test_no_progress_line_when_stderr_is_a_pipe(agents: AgentThread, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(4 * 1024 * 1024))
    done = subprocess.run([*SHOAL, "put", agents.targets_spec(), str(tmp_path / "f"), str(tmp_path / "g")],
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout == b""
    assert done.stderr.startswith(b"shoal: 3 ok") and b"\r" not in done.stderr


def test_units() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1536, 300 * 1024 * 1024)] == ["0 B", "1023 B", "1.5 KiB", "300.0 MiB"]
    assert [format_duration(s) for s in (0.2, 61, 3725)] == ["0:00", "1:01", "1:02:05"]
