"""Commands on a pseudo-terminal, and `shoal login` (issue 17, points 4 and 5).

Real agents on loopback, real ptys on both sides: the agent's for the command, and
one made by the test for the controller when the controller must sit on a
terminal (raw mode, window size, SIGWINCH). What the command saw is read from the
command itself (`tty`, `stty size`); the local terminal's modes are compared with
`tcgetattr` before and after.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import select
import struct
import subprocess
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from tests.agents import AgentThread, running_agents, shoal, target_for
from tests.programs import SHOAL

# How long a step may take before the test calls it hung (never a pass condition).
HANG = 30.0


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """A pty whose slave is the controlling terminal of the process started on it."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        _set_size(self.slave, rows, cols)
        self.modes = termios.tcgetattr(self.slave)
        self.seen = b""
        self.proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     start_new_session=True, preexec_fn=self._take_tty)

    @staticmethod
    def _take_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def expect(self, pattern: bytes) -> re.Match[bytes]:
        """Read until `pattern` (a regex) shows up in the output since the last match."""
        while True:
            found = re.search(pattern, self.seen)
            if found:
                self.seen = self.seen[found.end():]
                return found
            ready, _, _ = select.select([self.master], [], [], HANG)
            assert ready, f"hung waiting for {pattern!r}; got {self.seen!r}"
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            assert data, f"terminal closed waiting for {pattern!r}; got {self.seen!r}"
            self.seen += data

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def resize(self, rows: int, cols: int) -> None:
        """Change the window size: the kernel sends SIGWINCH to the process on it."""
        _set_size(self.master, rows, cols)

    def wait(self) -> int:
        return self.proc.wait(HANG)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def agent(start_agents: Callable[..., AgentThread]) -> AgentThread:
    return start_agents()


def _shoal_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for t in made:
        t.close()


def _on_terminal(made: list[Terminal], argv: list[str], rows: int = 30, cols: int = 90) -> Terminal:
    t = Terminal(argv, rows, cols)
    made.append(t)
    return t


# -- the library ---------------------------------------------------------------


async def test_a_pty_command_has_a_terminal_of_the_size_sent() -> None:
    async with running_agents() as (a,):
        client = await AgentClient.connect(target_for(a))
        try:
            proc = await client.exec(Command(shell="tty; stty size; echo to-stderr >&2", pty=True, rows=33, cols=111))
            out = b"".join([event.data async for event in proc])
            result = await proc.wait()
        finally:
            await client.close()
    assert re.fullmatch(rb"/dev/pts/\d+\r\n33 111\r\nto-stderr\r\n", out), out
    assert (result.status, result.stderr_bytes) == (0, 0)  # one terminal, one stream


async def test_a_resize_reaches_the_program() -> None:
    # The shell waits in `wait`, which a trapped signal interrupts; the sleep ignores SIGWINCH.
    script = "trap 'stty size; kill $!; exit 0' WINCH; sleep 1000 & echo ready; wait"
    async with running_agents() as (a,):
        client = await AgentClient.connect(target_for(a))
        try:
            proc = await client.exec(Command(shell=script, pty=True, rows=24, cols=80))
            events = proc.__aiter__()
            seen = b""
            while b"ready" not in seen:
                seen += (await events.__anext__()).data
            proc.resize(50, 160)
            out = b"".join([event.data async for event in proc])
            result = await proc.wait()
        finally:
            await client.close()
    assert out.endswith(b"50 160\r\n"), out
    assert result.status == 0


async def test_piped_input_ends_with_the_terminals_eof() -> None:
    async with running_agents() as (a,):
        client = await AgentClient.connect(target_for(a))
        try:
            proc = await client.exec(Command(shell="wc -c", pty=True, stdin=True))
            await proc.write(b"abc\nde")  # a partial last line: ^D twice
            proc.close_stdin()
            out = b"".join([event.data async for event in proc])
            result = await proc.wait()
        finally:
            await client.close()
    assert result.status == 0
    assert out.endswith(b"de6\r\n"), out  # the echoed partial line, then wc's count of all 6 bytes


# -- shoal run --pty -------------------------------------------------------------


def test_run_pty_prints_the_remote_tty(capsysbinary, agent: AgentThread) -> None:
    status, out, err = shoal(capsysbinary, "run", "-n", "--pty", agent.targets_spec(), "--", "tty")
    assert status == 0, err
    assert re.fullmatch(rb"/dev/pts/\d+\r\n", out), out


def test_run_pty_on_many_hosts_prefixes_each_line(capsysbinary) -> None:
    with AgentThread(2) as agents:
        status, out, err = shoal(capsysbinary, "run", "-n", "--pty", "-o", "stream", agents.targets_spec(), "--",
                                 "tty; stty size")
    assert status == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 4
    for address in agents.addresses:
        mine = [line for line in lines if line.startswith(address)]
        assert len(mine) == 2 and re.search(r"/dev/pts/\d+", mine[0]) and "24 80" in mine[1], lines


def test_run_pty_with_piped_stdin(agent: AgentThread) -> None:
    proc = subprocess.run([*SHOAL, "run", "--pty", agent.targets_spec(), "--", "wc -l"], input=b"a\nb\nc\n",
                          capture_output=True, timeout=HANG, env=_shoal_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == b"3"


def test_run_pty_on_a_terminal_sends_its_size_and_restores_its_modes(terminal: list[Terminal],
                                                                     agent: AgentThread) -> None:
    t = _on_terminal(terminal, [*SHOAL, "run", "--pty", agent.targets_spec(), "--",
                                "stty size; read line; echo got-$line"], rows=31, cols=97)
    t.expect(rb"31 97\r\n")
    t.type(b"hello\r")  # raw mode: the Enter key's CR goes through untranslated, the remote tty maps it
    t.expect(rb"got-hello")
    assert t.wait() == 0
    assert termios.tcgetattr(t.slave) == t.modes


# -- shoal login -------------------------------------------------------------------


def test_login_gives_a_shell_on_a_terminal_and_its_exit_status(terminal: list[Terminal], agent: AgentThread,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent's own SHELL (unset under systemd, /bin/sh on some CI hosts) must not
    # choose the shell: as with sshd, it is the user's from the user database.
    monkeypatch.setenv("SHELL", "/bin/sh")
    t = _on_terminal(terminal, [*SHOAL, "login", agent.targets_spec()], rows=27, cols=101)
    t.type(b"stty size; tty; shopt -q login_shell 2>/dev/null && echo LOGIN-SHELL || echo OTHER-SHELL\r")
    found = t.expect(rb"(\d+) (\d+)\r\n(/dev/pts/\d+)\r\n(LOGIN-SHELL|OTHER-SHELL)\r\n")
    assert found.group(1, 2) == (b"27", b"101")
    if os.path.basename(pwd.getpwuid(os.getuid()).pw_shell) == "bash":
        assert found.group(4) == b"LOGIN-SHELL"
    t.type(b"exit 3\r")
    assert t.wait() == 3
    assert termios.tcgetattr(t.slave) == t.modes


def test_login_follows_the_window_size(terminal: list[Terminal], agent: AgentThread) -> None:
    t = _on_terminal(terminal, [*SHOAL, "login", agent.targets_spec()], rows=24, cols=80)
    t.type(b"sleep 1000 & trap 'stty size; kill %1' WINCH; echo RE\"\"ADY; wait\r")
    t.expect(rb"READY")
    t.resize(40, 132)
    t.expect(rb"40 132\r\n")
    t.type(b"exit 5\r")
    assert t.wait() == 5
    assert termios.tcgetattr(t.slave) == t.modes


def test_login_restores_the_terminal_when_killed(terminal: list[Terminal], agent: AgentThread) -> None:
    t = _on_terminal(terminal, [*SHOAL, "login", agent.targets_spec()])
    t.type(b"echo RE\"\"ADY\r")
    t.expect(rb"READY")
    assert termios.tcgetattr(t.slave) != t.modes  # raw while the shell runs
    t.proc.terminate()
    assert t.wait() == 128 + 15
    assert termios.tcgetattr(t.slave) == t.modes


def test_login_through_a_gateway_runs_a_command_and_exits_with_its_status(
        terminal: list[Terminal], start_agents: Callable[..., AgentThread], tmp_path: Path) -> None:
    from tests.rawpeer import audit_events

    gateway_audit = tmp_path / "gateway-audit.jsonl"
    gateway, target = start_agents(audit_log=str(gateway_audit)), start_agents()
    t = _on_terminal(terminal, [*SHOAL, "login", "--via", gateway.addresses[0], target.addresses[0]],
                     rows=26, cols=99)
    t.type(b"stty size; tty; echo RE\"\"LAYED\r")
    found = t.expect(rb"(\d+) (\d+)\r\n(/dev/pts/\d+)\r\nRELAYED\r\n")
    assert found.group(1, 2) == (b"26", b"99")
    t.type(b"exit 6\r")
    assert t.wait() == 6
    assert termios.tcgetattr(t.slave) == t.modes
    relays = audit_events(gateway_audit, event="relay")
    # The shell ran on the target, reached through the gateway, which ran nothing itself.
    assert [e["destination"] for e in relays] == [target.addresses[0]], relays
    assert not audit_events(gateway_audit, event="exec")


def test_login_to_an_unreachable_host_says_so(capsysbinary) -> None:
    from tests.agents import closed_port

    status, out, err = shoal(capsysbinary, "login", f"127.0.0.1:{closed_port()}")
    assert status == 255
    assert err.count(b"\n") == 1 and b"Traceback" not in err
