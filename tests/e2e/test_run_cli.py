"""`shoal run` output options end to end: stdin broadcast, failures mixed with good hosts,
JSON, --failed-only, --outdir names, and the progress line on a real terminal."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from tests.agents import AgentThread, shoal, closed_port
from tests.debris import marked, tokens_of
from tests.waiting import wait_for
from tests.programs import SHOAL



@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 10}


def test_stdin_reaches_ten_hosts_byte_exact(agents: AgentThread) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # beyond the stdin window, so credit is exercised
    done = subprocess.run([*SHOAL, "run", agents.targets_spec(), "-o", "gather", "--", "sha256sum"],
                          input=data, capture_output=True, timeout=60)
    digest = hashlib.sha256(data).hexdigest().encode()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].endswith(b" (10)")  # one group: every host got the same bytes
    assert done.stdout.splitlines()[3:] == [digest + b"  -"]


def test_no_stdin_flag_keeps_stdin_home(agents: AgentThread) -> None:
    done = subprocess.run([*SHOAL, "run", agents.targets_spec(), "-n", "-o", "gather", "--", "wc -c"],
                          input=b"not sent", capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[3:] == [b"0"]


def test_unresolvable_and_unreachable_hosts_fail_alone(agents: AgentThread,
                                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    good = agents.addresses[:2]
    spec = ",".join([good[0], "no-such-host.invalid", closed, good[1]])
    status, out, err = shoal(capsysbinary, "run", spec, "-n", "-o", "stream", "--", "echo hello")
    width = max(len(h) for h in [*good, "no-such-host.invalid", closed])
    assert status == 255
    assert sorted(out.splitlines()) == sorted(f"{h}:{' ' * (width - len(h))} hello".encode() for h in good)
    lines = err.decode().splitlines()
    assert f"shoal: {closed}: unreachable: connection refused" in lines
    assert any(line.startswith("shoal: no-such-host.invalid: unreachable: cannot resolve host") for line in lines)
    assert lines[-1].startswith(f"shoal: 2 ok, 0 failed, 2 unreachable ({closed},no-such-host.invalid) in ")
    assert len(lines) == 3


def test_json_through_the_cli_encodes_binary_and_reports_exits(agents: AgentThread,
                                                              capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    spec = f"{agents.addresses[0]},no-such-host.invalid"
    status, out, err = shoal(capsysbinary, "run", spec, "-n", "-o", "json", "--",
                             r"printf '\377\376'; echo warn >&2; exit 3")
    events = [json.loads(line) for line in out.splitlines()]
    host = agents.addresses[0]
    assert status == 255
    assert [e["event"] for e in events if e.get("host") == host] == ["start", "output", "output", "exit"]
    by = {(e["event"], e.get("stream")): e for e in events if e.get("host") == host}
    assert base64.b64decode(by["output", "stdout"]["data_b64"]) == b"\xff\xfe"
    assert by["output", "stderr"]["data"] == "warn\n"
    assert (by["exit", None]["status"], by["exit", None]["code"], by["exit", None]["ok"]) == (3, 3, False)
    lost = next(e for e in events if e.get("host") == "no-such-host.invalid")
    assert lost["event"] == "exit" and lost["unreachable"] and lost["error"].startswith("cannot resolve host")
    assert events[-1] == {**events[-1], "event": "summary", "status": 255, "ok": [], "failed": [host],
                          "unreachable": ["no-such-host.invalid"]}
    assert all(isinstance(e["t"], float | int) for e in events)
    assert err.startswith(b"shoal: 0 ok, 1 failed")


def test_json_invalid_line_goes_to_base64_alone(agents: AgentThread,
                                                capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "-o", "json", "--",
                           r"printf 'hi\n\377\nbye\n'")
    pieces = [e for e in map(json.loads, out.splitlines()) if e["event"] == "output"]
    assert status == 0
    assert [(e.get("data"), e.get("data_b64")) for e in pieces] == [("hi\n", None), (None, "/wo="), ("bye\n", None)]


def test_outdir_names_unix_socket_hosts_safely(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sock = tmp_path / "a.sock"
    with AgentThread(1, listen=(f"unix:{sock}",)) as t:
        status, out, _ = shoal(capsysbinary, "run", t.targets_spec(), "--outdir", str(tmp_path / "o"), "-n",
                               "--", "echo out; echo err >&2")
    stem = "unix:" + str(sock).replace("/", "%2F")
    assert status == 0 and out == b"out\n"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [stem + ".err", stem + ".out"]
    assert (tmp_path / "o" / (stem + ".out")).read_bytes() == b"out\n"


def test_progress_line_on_a_terminal_never_reaches_stdout(agents: AgentThread, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SHOAL, "run", agents.targets_spec(), "-n", "-o", "gather", "--",
                             f"while [ ! -e {flag} ]; do sleep 0.02; done; echo finished"],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""

    def all_running() -> bool:  # every host is waiting for the flag
        nonlocal seen
        assert proc.poll() is None, seen
        seen += os.read(master, 4096)
        return b"10 running" in seen

    wait_for(all_running, timeout=30, interval=0, what="the progress line to show 10 running")
    flag.touch()
    out, _ = proc.communicate(timeout=30)
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0
    lines = out.splitlines()
    assert lines[1].endswith(b" (10)") and lines[3:] == [b"finished"] and b"\x1b" not in out
    assert b"\r\x1b[Kshoal: 0/10 done, 10 running, 0 failed" in seen
    summary = seen.rpartition(b"\r\x1b[K")[2]
    assert summary.startswith(b"shoal: 10 ok, 0 failed, 0 unreachable in ")


def test_no_progress_line_when_stderr_is_a_pipe(agents: AgentThread) -> None:
    done = subprocess.run([*SHOAL, "run", agents.targets_spec(), "-n", "-o", "gather", "--", "sleep 0.3"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.startswith(b"shoal: 10 ok") and b"\r" not in done.stderr



def _outcomes(slots: Path) -> str:
    """A command whose first three hosts exit 3, die by SIGKILL and hang; the rest exit 0."""
    return (f"mkdir {slots}/a 2>/dev/null && exit 3; mkdir {slots}/b 2>/dev/null && kill -9 $$; "
            f"mkdir {slots}/c 2>/dev/null && exec sleep 30; exit 0")


def test_stream_gives_every_failed_host_its_line_and_quiet_keeps_the_unreachable(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    spec = ",".join([*agents.addresses[:4], closed])
    (tmp_path / "loud").mkdir()
    status, _, err = shoal(capsysbinary, "run", spec, "-n", "-o", "stream", "-t", "2", "-v", "--",
                           _outcomes(tmp_path / "loud"))
    lines = err.decode().splitlines()
    assert status == 255 and re.fullmatch(r"shoal: 1 ok, 1 failed \(\S+\), 1 signal \(\S+\), 1 timed_out \(\S+\), "
                                          rf"1 unreachable \({re.escape(closed)}\) in \S+s", lines[-1])
    reasons = sorted(line.split(": ", 2)[2] for line in lines[:-1])
    assert reasons == ["failed (code 3)", "signal (KILL)", "timed_out (after 2s)", "unreachable: connection refused"]
    assert all(line.split(": ")[1] in spec.split(",") for line in lines[:-1])
    (tmp_path / "quiet").mkdir()
    status, _, err = shoal(capsysbinary, "run", spec, "-n", "-q", "-o", "stream", "-t", "2", "--",
                           _outcomes(tmp_path / "quiet"))
    assert status == 255 and err.decode().splitlines() == [f"shoal: {closed}: unreachable: connection refused"]


ENDLESS = "yes 'shoal-endless-output-line'"
SIZED = "yes 'shoal-sized-output-line' | head -n 200000"  # far more than a pipe holds


@pytest.mark.parametrize(("options", "command", "hosts", "endless"), [
    (["-o", "stream"], ENDLESS, 3, True),
    (["-o", "json"], ENDLESS, 3, True),
    (["--raw"], ENDLESS, 1, True),
    (["-o", "stream", "--outdir", "{tmp}/o"], ENDLESS, 3, True),
    (["-o", "gather"], SIZED, 3, False),
    (["--failed-only"], SIZED + "; exit 1", 3, False),
], ids=["stream", "json", "raw", "outdir", "gather", "failed-only"])
def test_a_reader_that_stops_early_ends_the_run_quietly_with_141(
        agents: AgentThread, tmp_path: Path, options: list[str], command: str, hosts: int, endless: bool) -> None:
    spec = ",".join(agents.addresses[:hosts])
    argv = [*SHOAL, "run", spec, "-n", *(o.replace("{tmp}", str(tmp_path)) for o in options), "--", command]
    _read_then_go_away(agents, argv, hosts if endless else 0)


def _read_then_go_away(agents: AgentThread, argv: list[str], endless_hosts: int) -> None:
    """Run `argv` with stdout to a pipe we close: after one line while `endless_hosts`
    hosts still print (like `| head -1`), or at once (gather and --failed-only print at
    the end, into a reader already gone). Exit 141, nothing on stderr, commands ended."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    tokens: list[str] = []
    if endless_hosts:
        # Keep reading until every host's command runs: a write into a full pipe holds
        # the whole controller, so on a loaded machine the last hosts may not start
        # before the first fills the pipe.
        fd = proc.stdout.fileno()
        tokens = wait_for(lambda: os.read(fd, 1 << 16) and _running_tokens(agents, endless_hosts),  # type: ignore[assignment]
                          timeout=30, interval=0)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) == 141, err
    assert err == b""
    for token in tokens:
        wait_for(lambda: not marked(token), timeout=30)


def _running_tokens(agents: AgentThread, count: int) -> list[str] | None:
    tokens = [t for agent in agents.agents for t in agents.call(tokens_of, agent)]
    return tokens if len(tokens) == count else None


def test_gather_max_output_keeps_head_and_tail_and_outdir_keeps_everything(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    hosts = agents.addresses[:3]
    status, out, _ = shoal(capsysbinary, "run", ",".join(hosts), "-n", "-o", "gather", "--max-output", "64K",
                           "--outdir", str(tmp_path), "--", "seq 1 300000")
    full = b"".join(b"%d\n" % i for i in range(1, 300001))
    assert status == 0
    lines = out.splitlines()
    assert lines[1].endswith(b" (3)") and lines[3] == b"1"  # one group: the same head, gap and tail
    gaps = [line for line in lines if line.startswith(b"[... ")]
    assert len(gaps) == 1 and gaps[0].endswith(b" MiB not shown ...]")
    head, tail = out.split(gaps[0] + b"\n")
    assert full.startswith(head.split(b"---------------\n")[-1])
    assert full.endswith(tail) and tail.endswith(b"\n300000\n") and tail.startswith(b"2")  # whole lines
    assert len(head) + len(tail) < 64 * 1024 + 200
    for host in hosts:
        assert (tmp_path / (host + ".out")).read_bytes() == full


def test_max_output_none_and_stream_default_hold_everything(
        agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    full = b"".join(b"%d\n" % i for i in range(1, 30001))
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "-o", "gather", "--max-output", "none",
                           "--", "seq 1 30000")
    assert status == 0 and out.split(b"---------------\n")[-1] == full
    status, out, _ = shoal(capsysbinary, "run", agents.addresses[0], "-n", "--raw", "--", "seq 1 30000")
    assert status == 0 and out == full
    with pytest.raises(SystemExit) as bad:
        shoal(capsysbinary, "run", agents.addresses[0], "--max-output", "lots", "--", "true")
    assert bad.value.code == 2


def test_an_outdir_file_that_cannot_be_written_ends_the_run_without_blaming_the_host(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    host = agents.addresses[0]
    (tmp_path / (host + ".out")).symlink_to("/dev/full")  # every write: ENOSPC
    status, _, err = shoal(capsysbinary, "run", host, "-n", "--outdir", str(tmp_path), "--", "echo hello")
    assert status == 2
    assert err.decode() == f"shoal: --outdir: cannot write {tmp_path / (host + '.out')}: No space left on device\n"


def test_batch_with_a_reader_that_stops_early_ends_quietly_with_141(agents: AgentThread, tmp_path: Path) -> None:
    script = tmp_path / "endless"
    script.write_text(f"{ENDLESS}\necho never\n")
    _read_then_go_away(agents, [*SHOAL, "batch", ",".join(agents.addresses[:3]), str(script)], 3)
