"""`shoal shell` driven the way a person uses it: in a real pseudo-terminal.

The shell runs as `python -m shoal.controller.cli.main shell ...` with the pty as its
controlling terminal, so \\x03 really is SIGINT from the tty driver and readline
really edits the line. Agents serve from the test process (AgentThread), except
where one must be killed and restarted: that one is a `shoal-agent` subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.agents import AgentThread
from tests.debris import marked, marker_of
from tests.hubs import HubThread, new_key
from tests.programs import SHOAL, SHOAL_AGENT
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
# Make the pty the child's controlling terminal, then become the shell: setsid is
# done by Popen(start_new_session=True), TIOCSCTTY here, before any Python of ours.
LAUNCH = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])"
PROMPT = re.compile(rb"shoal \[[^\]]*\]> ")
DEADLINE = 15.0


class Terminal:
    """A process on a pty, with expect-style reading."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        env = dict(os.environ, TERM="dumb", NO_COLOR="1", INPUTRC="/dev/null", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *SHOAL, *args],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env, cwd=REPO)
        os.close(slave)
        self.fd = master
        self.seen = b""
        self.pos = 0

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the pty
            data = b""
        self.seen += data
        return bool(data)

    def expect(self, pattern: re.Pattern[bytes] | bytes, deadline: float = DEADLINE) -> bytes:
        """Wait for `pattern` after what was consumed; return the text up to its end."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))

        def found() -> re.Match[bytes] | None:
            match = regex.search(self.seen, self.pos)
            if match is None and not self._read(0.5) and self.proc.poll() is not None:
                raise AssertionError("the process exited")
            return match

        try:
            match = wait_for(found, timeout=deadline, interval=0, what=f"{regex.pattern!r} on the terminal")
        except AssertionError as exc:
            raise AssertionError(f"never saw {regex.pattern!r} ({exc}); terminal shows:\n"
                                 + self.seen[-3000:].decode(errors="replace")) from None
        text = self.seen[self.pos:match.end()]
        self.pos = match.end()
        return text

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def line(self, text: str) -> bytes:
        """Type a line and return everything shown until the next prompt."""
        self.send(text + "\r")
        return self.expect(PROMPT)

    def finish(self, deadline: float = DEADLINE) -> int:
        """Wait for the process to exit (draining the pty) and return its status."""
        def exited() -> bool:
            self._read(0.2)
            return self.proc.poll() is not None

        with contextlib.suppress(AssertionError):  # still running: killed below
            wait_for(exited, timeout=deadline, interval=0, what="the process to exit")
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait()
        self.close()
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    """Start shells on ptys; any still running when the test ends are killed."""
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(*args))
        return started[-1]

    yield start
    for term in started:
        term.close()


def hosts_said(text: bytes, hosts: list[str], words: str) -> set[str]:
    """The hosts whose prefixed line `host: words` appears in `text`."""
    return {h for h in hosts if re.search(re.escape(h).encode() + rb": +" + re.escape(words).encode() + rb"\r?\n", text)}


def sleeps_under_us() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "sleep 30" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def test_lines_run_prefixed_and_commands_change_the_session(terminal: Callable[..., Terminal]) -> None:
    with AgentThread(3) as agents:
        hosts = agents.addresses
        term = terminal("shell", agents.targets_spec())
        term.expect(b"connected to 3 of 3 hosts")
        term.expect(PROMPT)
        shown = term.line("echo hello-there")
        assert hosts_said(shown, hosts, "hello-there") == set(hosts)
        assert b"shoal [3 hosts]> " in term.seen

        shown = term.line("exit 4")
        assert b"shoal [3 hosts, 3 failed]> " in shown
        shown = term.line(":last")
        assert re.search(rb"failed \(code 4\) +status 4 +3 +127\.0\.0\.1:\[", shown)

        shown = term.line("cd /tmp")  # would move a throwaway shell only: not run, pointed at :cd
        assert b"use :cd /tmp" in shown and not hosts_said(shown, hosts, "")
        shown = term.line("echo $(pwd)")
        assert b"/tmp" not in shown
        term.line(":cd /tmp")
        term.line(":env GREETING=bonjour")
        shown = term.line("echo $GREETING-$(pwd)")
        assert hosts_said(shown, hosts, "bonjour-/tmp") == set(hosts)

        term.line(":mode gather")
        shown = term.line("echo same-everywhere")
        assert re.search(rb"127\.0\.0\.1:\[[0-9,-]+\] \(3\)\r?\n-+\r?\nsame-everywhere\r?\n", shown)
        assert len(re.findall(rb"\nsame-everywhere\r?\n", shown)) == 1

        term.line(":mode stream")
        term.line(f":drop {hosts[0]}")
        shown = term.line("echo after-drop")
        assert hosts_said(shown, hosts, "after-drop") == set(hosts[1:])
        assert b"shoal [2 hosts]> " in shown

        term.line(":timeout 0.5")
        shown = term.line("sleep 5")
        assert b"timed_out (after 0.5s)" in shown
        term.line(":timeout off")

        shown = term.line(":target 127.0.0.1:*")  # globs match known hosts
        assert b"targets: 3 hosts" in shown
        # Operators apply left to right across commas: (0 and 1) minus 0, not 0 and (1 minus 0).
        shown = term.line(f":target {hosts[0]},{hosts[1]}!{hosts[0]}")
        assert f"targets: 1 host ({hosts[1]})".encode() in shown
        term.line(f":target {hosts[2]}")
        shown = term.line(f":add {hosts[0]}")
        assert b"targets: 2 hosts" in shown
        shown = term.line(":hos\t")  # Tab completes the command
        assert shown.count(b" connected ") == 3
        assert re.search(rb"\* " + re.escape(hosts[0].encode()) + rb" +connected", shown)

        shown = term.line(":help")
        for name in (":hosts", ":target", ":add", ":drop", ":mode", ":timeout", ":cd", ":env", ":last", ":quit"):
            assert name.encode() in shown
        shown = term.line(":nonsense")
        assert b"shoal: unknown shell command :nonsense (try :help)" in shown

        term.send(":quit\r")
        assert term.finish() == 0


def ctrl_c_at_the_prompt(term: Terminal) -> bytes:
    """Press Ctrl-C at the prompt and wait for the next one, pressing again if need be.

    CPython's readline notices a signal only when it interrupts readline's select():
    a SIGINT that lands while readline is still redrawing the line (as it does when the
    key follows the echo at once) stays pending until the next one. A user would press
    again; so does this test, after a pause long enough for the first to show.
    """
    for _ in range(3):
        term.send("\x03")
        try:
            return term.expect(PROMPT, deadline=3.0)
        except AssertionError:
            if term.proc.poll() is not None:
                raise
    return term.expect(PROMPT)


def test_ctrl_c_cancels_on_every_host_and_returns_to_the_prompt(terminal: Callable[..., Terminal]) -> None:
    with AgentThread(5) as agents:
        term = terminal("shell", agents.targets_spec(), "--kill-grace", "1")
        term.expect(PROMPT)
        term.send("sleep 30\r")
        wait_for(lambda: len(sleeps_under_us()) >= 5, timeout=DEADLINE, what="a remote sleep on every host")
        term.send("\x03")
        shown = term.expect(PROMPT)
        assert b"cancelling on every host" in shown
        wait_for(lambda: not sleeps_under_us(), timeout=DEADLINE, what="the remote sleeps to end after Ctrl-C")
        assert term.proc.poll() is None, "Ctrl-C must not leave the shell"

        term.send("echo partial-line")  # Ctrl-C at the prompt drops what was typed
        term.expect(b"partial-line")
        ctrl_c_at_the_prompt(term)
        shown = term.line("echo after-interrupt")
        assert hosts_said(shown, agents.addresses, "after-interrupt") == set(agents.addresses)
        assert b"partial-line" not in shown

        term.send("\x04")  # Ctrl-D leaves cleanly
        assert term.finish() == 0


def test_history_persists_across_sessions(terminal: Callable[..., Terminal]) -> None:
    with AgentThread(1) as agents:
        term = terminal("shell", agents.targets_spec())
        term.expect(PROMPT)
        term.line("echo remembered-line")
        term.send(":quit\r")
        assert term.finish() == 0
        history = Path(os.environ["XDG_STATE_HOME"]) / "shoal" / "history"
        assert "echo remembered-line" in history.read_text()

        term = terminal("shell", agents.targets_spec())
        term.expect(PROMPT)
        term.send("\x10\x10\r")  # Ctrl-P twice: back past ':quit' to the echo
        shown = term.expect(PROMPT)
        assert hosts_said(shown, agents.addresses, "remembered-line") == set(agents.addresses)
        term.send("\x04")
        assert term.finish() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent_process(port: int, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*SHOAL_AGENT, "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _listening_agent(state: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """Start an agent on `port` (a free one if None) and wait until it accepts.

    A port found free can be taken before the agent binds it (other processes' outgoing
    connections draw from the same range); an agent that exits instead of listening is
    started again, on a fresh port when the caller did not need this one.
    """
    for _ in range(5):
        chosen = port or _free_port()
        proc = _agent_process(chosen, state)

        def up() -> str | None:
            try:
                socket.create_connection(("127.0.0.1", chosen), timeout=1).close()
                return "listening"
            except OSError:
                return None if proc.poll() is None else "exited"

        if wait_for(up, timeout=DEADLINE, what=f"the agent to listen on port {chosen} or exit") == "listening":
            return proc, chosen
        proc.kill()
        proc.wait()
    raise AssertionError(f"no agent would listen (last port {chosen})")


def test_a_killed_agent_is_reported_once_and_comes_back(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    agent, port = _listening_agent(tmp_path)
    name = f"127.0.0.1:{port}"
    try:
        with AgentThread(1) as other:
            term = terminal("shell", f"{name},{other.targets_spec()}")
            term.expect(b"connected to 2 of 2 hosts")
            term.expect(PROMPT)
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            wait_for(lambda: re.search(re.escape(name).encode() + rb" +reconnecting", term.line(":hosts")),
                     timeout=DEADLINE, what="the killed agent shown as reconnecting")
            shown = term.line("echo still-working")
            assert hosts_said(shown, [name, *other.addresses], "still-working") == set(other.addresses)
            assert b"1 down" in shown

            agent, _ = _listening_agent(tmp_path, port)
            wait_for(lambda: re.search(re.escape(name).encode() + rb" +connected", term.line(":hosts")),
                     timeout=DEADLINE, what="the restarted agent shown as connected")
            shown = term.line("echo back-again")
            assert hosts_said(shown, [name, *other.addresses], "back-again") == {name, *other.addresses}
            assert len(re.findall(re.escape(name).encode() + rb": [^\r\n]*; reconnecting in the background",
                                  term.seen)) == 1
            assert term.seen.count(f"{name}: reconnected".encode()) == 1
            term.send(":quit\r")
            assert term.finish() == 0
    finally:
        agent.kill()
        agent.wait()


def test_the_shell_through_a_hub_runs_lines_on_agents_by_name(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    key, _ = new_key(tmp_path)
    with HubThread(tmp_path, ["web1", "web2"], key) as hub:
        term = terminal("shell", "web[1-2]", "--hub", str(hub.socket))
        term.expect(b"connected to 2 of 2 hosts")
        term.expect(PROMPT)
        shown = term.line("echo $SHOAL_HOST-here; exit 3")
        assert hosts_said(shown, ["web1", "web2"], "web1-here") == {"web1"}
        assert hosts_said(shown, ["web1", "web2"], "web2-here") == {"web2"}
        assert b"shoal [2 hosts, 2 failed]> " in shown
        shown = term.line(":hosts")
        assert shown.count(b" connected") == 2
        term.send(":quit\r")
        assert term.finish() == 0


def test_shell_refuses_a_command_after_double_dash(terminal: Callable[..., Terminal]) -> None:
    term = terminal("shell", "127.0.0.1:1", "--", "uptime")
    term.expect(b"shell takes no command")
    assert term.finish() == 2


@pytest.mark.parametrize("state_home", [True, False])
def test_history_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_home: bool) -> None:
    from shoal.controller.term.lineedit import history_path

    monkeypatch.setenv("HOME", str(tmp_path))
    if state_home:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        assert history_path() == tmp_path / "state" / "shoal" / "history"
    else:
        monkeypatch.delenv("XDG_STATE_HOME")
        assert history_path() == tmp_path / ".local" / "state" / "shoal" / "history"


def test_jobs_lists_the_detached_jobs_of_the_targeted_hosts(terminal: Callable[..., Terminal]) -> None:
    with AgentThread(2) as agents:
        started = subprocess.run([*SHOAL, "run", agents.addresses[0],
                                  "--detach", "--", "sleep 3600"], capture_output=True, timeout=60, check=True)
        job = started.stdout.decode().rpartition(": job ")[2].strip()
        term = terminal("shell", agents.targets_spec())
        term.expect(b"connected to 2 of 2 hosts")
        term.expect(PROMPT)
        shown = term.line(":jobs")
        assert re.search(re.escape(f"{agents.addresses[0]}  {job}  running").encode() + rb" +- +\S+ .*sleep 3600",
                         shown), shown
        assert agents.addresses[1].encode() not in shown.split(b"\n", 2)[-1]  # no jobs there: no row
        term.send(":quit\r")
        assert term.finish() == 0


def test_attach_and_kill_jobs_from_the_shell(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    flag = tmp_path / "go"
    with AgentThread(2) as agents:
        first, second = agents.addresses

        def detached(command: str) -> str:
            started = subprocess.run([sys.executable, "-m", "shoal.controller.cli.main", "run", first, "--detach",
                                      "--", command], capture_output=True, timeout=60, check=True)
            return started.stdout.decode().rpartition(": job ")[2].strip()

        waiting = detached(f"echo one; while [ ! -e {flag} ]; do sleep 0.05; done; echo two; exit 3")
        tree = detached("sleep 3600 & sleep 3600 & wait")
        term = terminal("shell", agents.targets_spec())
        term.expect(b"connected to 2 of 2 hosts")
        term.expect(PROMPT)
        term.line(f":target {first}")
        # :attach replays, follows live, and ends with the job's outcome like `shoal attach`
        term.send(f":attach {waiting}\r")
        term.expect(f"{first}: one".encode())
        flag.touch()
        shown = term.expect(PROMPT)
        assert f"{first}: two".encode() in shown and f"shoal: {first}: failed (code 3)".encode() in shown
        assert re.search(rb"failed \(code 3\) +status 3 +1 ", term.line(":last"))
        # :kill signals the job's whole tree: gone from the process table
        pid = agents.call(lambda: agents.agents[0].jobs.jobs[tree].child.pid)
        token = marker_of(pid)
        wait_for(lambda: len(marked(token)) == 3)
        shown = term.line(f":kill {tree} NOPE")
        assert b"unknown signal 'NOPE'" in shown and marked(token)
        term.line(f":add {second}")
        shown = term.line(f":kill {tree} KILL")
        assert f"{first}: killed job {tree} (3 processes)".encode() in shown
        assert f"shoal: {second}: no job {tree!r}".encode() in shown  # each host has its own jobs
        wait_for(lambda: not marked(token))
        shown = term.line(":jobs")
        assert re.search(re.escape(f"{first}  {waiting}  failed  ").encode(), shown), shown
        assert re.search(re.escape(f"{first}  {tree}  cancelled  ").encode(), shown), shown
        term.send(":quit\r")
        assert term.finish() == 0
