"""`shoal batch --outdir` and `--failed-only`, as a user sees them.

Three hosts: an in-process agent on TCP, one on a unix socket (its name needs
escaping in file names) and one in a child process with BATCH_FAIL=1
(tests/agent_pool.py), so the second command really fails on exactly that host.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.controller.term.batchoutput import SPOOL_MEMORY, FailedOutputFilter, command_directory_name
from shoal.controller.cli.main import main
from shoal.controller.term.display import Display
from shoal.controller.nodeset import NodeSet
from shoal.controller.term.output import StreamHandler
from shoal.controller.result import Result
from tests.agents import AgentThread, closed_port
from tests.agent_pool import start_pool, stop_pool

SCRIPT = """\
echo one; echo one-err >&2
echo two; test -z "$BATCH_FAIL" || { echo broken >&2; exit 3; }
echo three
"""
# The layout documented in controller/term/batchoutput.py, spelt out by hand.
DIRS = ["01-echo-one-echo-one-err-2", "02-echo-two-test-z-BATCH_FAIL-echo-broken-2", "03-echo-three"]


class Hosts:
    def __init__(self, tcp: str, unix_path: str, failing: str) -> None:
        self.tcp = tcp
        self.unix = f"unix:{unix_path}"
        self.failing = failing
        self.all = [tcp, self.unix, failing]
        self.spec = ",".join(self.all)
        self.width = max(len(h) for h in self.all)
        # unix:/tmp/sbXXXX/b.sock: mkdtemp names hold only letters, digits and `_`
        self.stems = {tcp: tcp, self.unix: "unix:" + unix_path.replace("/", "%2F"), failing: failing}

    def line(self, host: str, text: str) -> str:
        return f"{host}:{' ' * (self.width - len(host))} {text}\n"


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    sockdir = tempfile.mkdtemp(prefix="sb")  # short: unix socket paths are capped near 108 bytes
    env = {**{k: v for k, v in os.environ.items() if k != "BATCH_FAIL"}, "BATCH_FAIL": "1"}
    pool, port = start_pool("127.0.0.1", env=env)
    assert port, "the agent pool did not start"
    try:
        with AgentThread(1) as tcp, AgentThread(1, listen=(f"unix:{sockdir}/b.sock",)) as unix:
            yield Hosts(tcp.targets_spec(), f"{sockdir}/b.sock", f"127.0.0.1:{port}")
            assert unix.targets_spec() == f"unix:{sockdir}/b.sock"
    finally:
        stop_pool(pool)
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "steps"
    path.write_text(SCRIPT)
    return path


def batch(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    status = main(["batch", *argv])
    out, err = capsysbinary.readouterr()
    return status, out.decode(), err.decode()


def table_row(err: str, number: int) -> list[str]:
    for line in err.splitlines():
        if line.startswith(f"{number}  "):
            return [cell.strip() for cell in line.split("  ") if cell.strip()]
    raise AssertionError(f"no row {number} in:\n{err}")


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_outdir_keeps_each_commands_output_per_host(hosts: Hosts, script: Path, tmp_path: Path,
                                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    out_dir = tmp_path / "out"
    status, out, err = batch(capsysbinary, hosts.spec, str(script), "--outdir", str(out_dir))
    assert status == 3
    assert sorted(p.name for p in out_dir.iterdir()) == DIRS
    first = {f"{hosts.stems[h]}.out": b"one\n" for h in hosts.all}
    first.update({f"{hosts.stems[h]}.err": b"one-err\n" for h in hosts.all})
    assert files(out_dir / DIRS[0]) == first
    second = {f"{hosts.stems[h]}.out": b"two\n" for h in hosts.all}
    second.update({f"{hosts.stems[h]}.err": b"" for h in hosts.all})
    second[f"{hosts.failing}.err"] = b"broken\n"
    assert files(out_dir / DIRS[1]) == second
    ran_third = [hosts.tcp, hosts.unix]  # the failing host skipped it: no files
    assert files(out_dir / DIRS[2]) == {**{f"{hosts.stems[h]}.out": b"three\n" for h in ran_third},
                                        **{f"{hosts.stems[h]}.err": b"" for h in ran_third}}
    assert all(hosts.line(h, "two") in out for h in hosts.all)  # the files are a copy; output still shows
    assert hosts.line(hosts.failing, "broken") in err


def test_failed_only_shows_just_the_failing_hosts_output(hosts: Hosts, script: Path,
                                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = batch(capsysbinary, hosts.spec, str(script), "--failed-only")
    assert status == 3
    assert out == hosts.line(hosts.failing, "two")
    assert err.splitlines()[0] == hosts.line(hosts.failing, "broken").rstrip("\n")
    assert not any(hosts.line(h, "one-err") in err for h in hosts.all)
    ok, failed = NodeSet([hosts.tcp, hosts.unix]), hosts.failing
    assert table_row(err, 1)[2:] == [f"3 {NodeSet(hosts.all)}", "0", "0"]
    assert table_row(err, 2)[2:] == [f"2 {ok}", f"1 {failed}", "0"]
    assert table_row(err, 3)[2:] == [f"2 {ok}", "0", f"1 {failed}"]


def test_failed_only_gathers_only_commands_that_failed(hosts: Hosts, script: Path,
                                                       capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = batch(capsysbinary, hosts.spec, str(script), "--failed-only", "-o", "gather", "-q")
    rule = "-" * 15
    assert status == 3
    assert out == (f'=== 2: echo two; test -z "$BATCH_FAIL" || {{ echo broken >&2; exit 3; }}\n'
                   f"{rule}\n{hosts.failing} (1)\n{rule}\ntwo\n")
    assert err == f"{rule}\n{hosts.failing} (1) (stderr)\n{rule}\nbroken\n"  # -q: a command that ran and failed gets no line


def test_failed_only_json_has_events_of_failed_hosts_and_every_summary(
        hosts: Hosts, script: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = batch(capsysbinary, hosts.spec, str(script), "--failed-only", "-o", "json", "-q")
    events = [json.loads(line) for line in out.splitlines()]
    assert status == 3
    host_events = [(e["command"], e["event"], e["host"]) for e in events if "host" in e]
    assert host_events == [(2, "start", hosts.failing), (2, "output", hosts.failing),
                           (2, "output", hosts.failing), (2, "exit", hosts.failing)]
    outputs = {e["stream"]: e["data"] for e in events if e["event"] == "output"}
    assert outputs == {"stdout": "two\n", "stderr": "broken\n"}
    assert [(e["command"], e["status"]) for e in events if e["event"] == "summary"] == [(1, 0), (2, 3), (3, 0)]


def test_an_unreachable_host_is_shown_and_gets_no_files(hosts: Hosts, script: Path, tmp_path: Path,
                                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    dead = f"127.0.0.1:{closed_port()}"
    status, out, err = batch(capsysbinary, f"{hosts.tcp},{dead}", str(script), "--failed-only",
                             "--outdir", str(tmp_path / "o"))
    assert status == 255
    assert out == ""
    assert f"shoal: {dead}: unreachable: connection refused" in err
    assert table_row(err, 1)[2:] == [f"1 {hosts.tcp}", f"1 {dead}", "0"]
    for directory in DIRS:
        assert sorted(files(tmp_path / "o" / directory)) == [f"{hosts.tcp}.err", f"{hosts.tcp}.out"]


def test_an_outdir_that_cannot_be_made_fails_before_anything_runs(
        hosts: Hosts, script: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "plain-file").write_text("")
    status, out, err = batch(capsysbinary, hosts.tcp, str(script), "--outdir", str(tmp_path / "plain-file"))
    assert status == 2 and out == ""
    assert err.startswith("shoal: ") and "plain-file" in err and len(err.splitlines()) == 1


def test_command_directory_names_sort_in_file_order_and_stay_short() -> None:
    assert command_directory_name(0, 3, "apt-get update") == "01-apt-get-update"
    assert command_directory_name(8, 120, "echo hi") == "009-echo-hi"
    assert command_directory_name(1, 3, "*** ///") == "02"
    assert command_directory_name(0, 1, "../../etc") == "01-etc"
    long = command_directory_name(0, 1, "x" * 100)
    assert long == "01-" + "x" * 40


def test_held_output_keeps_order_and_bytes_past_the_memory_spool() -> None:
    """More than SPOOL_MEMORY held (so it spills to disk), interleaved, replayed exactly."""
    stdout, stderr = io.BytesIO(), io.BytesIO()
    stream = StreamHandler(Display(stdout, stderr, color=False), ["h"])
    held = FailedOutputFilter(stream)
    chunk = b"".join(b"%07d\n" % i for i in range(SPOOL_MEMORY // 8 + 1))
    for host in ("h", "ok"):
        held.on_start(host)
        held.on_output(host, "stdout", chunk)
        held.on_output(host, "stderr", b"warn\n")
        held.on_output(host, "stdout", b"tail")
    held.on_result(Result(host="ok", status=0, code=0))
    assert stdout.getvalue() == b"" and held.shown == 0
    held.on_result(Result(host="h", status=1, code=1))
    held.close()
    assert stdout.getvalue() == b"".join(b"h: " + line + b"\n" for line in (chunk + b"tail").split(b"\n"))
    assert stderr.getvalue() == b"h: warn\nshoal: h: failed (code 1)\n"
    assert held.shown == 1
