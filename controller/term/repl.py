"""The interactive shell: read a line, run it on the current hosts, repeat.

Threads: readline is blocking and wants the main thread (only the main thread
receives SIGINT, and Python's readline hook turns it into KeyboardInterrupt with
the line state cleaned up), while the connections live on an asyncio loop. So
the loop runs in a background thread for the whole session and the main thread
reads lines and submits work to it with `run_coroutine_threadsafe`. While a
command runs, the main thread waits on that future; Ctrl-C interrupts the wait
(lock waits are interruptible on POSIX) and we cancel on every host (SIGINT,
SIGTERM, SIGKILL, `kill_grace` apart), a second Ctrl-C kills at once and a third
stops waiting. At the prompt Ctrl-C just clears the line. Nothing ever writes
while the prompt is shown: session events (drops, reconnects) are queued and
printed just before the next prompt.

Lines starting with `:` are shell commands (see `COMMANDS` and `:help`); any
other non-blank line runs on every current host through /bin/sh.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import signal
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shoal.protocol.errors import ConfigError

from shoal.controller.remote import Command
from shoal.controller.term.display import Display
from shoal.controller.term.lineedit import LineEditor
from shoal.controller.fanout import fan_out
from shoal.controller.fleet import ConnectOptions
from shoal.controller.jobs import Action, JobsAnswer, ask, format_jobs, kill_report, killing, listing, parse_signal
from shoal.controller.inventory import Inventory
from shoal.controller.nodeset import NodeSet, split_expression, split_patterns
from shoal.controller.outcome import HOST_OUTCOMES
from shoal.controller.term.output import GatherHandler, StreamHandler
from shoal.controller.result import Result
from shoal.controller.pool import LinkState, Session
from shoal.controller.term.summary import summary_line
from shoal.controller.targets import Target, parse_targets

__all__ = ["Repl", "ReplSettings", "COMMANDS"]

T = TypeVar("T")

# How long closing may take before we stop waiting for goodbyes.
CLOSE_WAIT = 5.0
# Signals only the main thread may take: it reads the terminal and owns Ctrl-C.
_MAIN_THREAD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}

COMMANDS: dict[str, tuple[str, str]] = {
    ":help": ("", "show this help"),
    ":hosts": ("", "list every host with its state: connected, connecting, reconnecting, failed (* = targeted)"),
    ":target": ("PATTERN", "run later lines on these hosts only (host list syntax; * and ? match known hosts)"),
    ":add": ("PATTERN", "add hosts to the current targets, connecting new ones"),
    ":drop": ("PATTERN", "remove hosts from the current targets (their connections stay open)"),
    ":mode": ("stream|gather", "stream prefixed lines as they come, or gather identical output per host set"),
    ":timeout": ("SECS|off", "kill later commands after SECS on each host"),
    ":idle": ("SECS|off", "kill later commands once they print nothing for SECS (on each host)"),
    ":cd": ("[DIR]", "run later commands in DIR (no DIR: the remote user's home)"),
    ":user": ("[NAME]", "run later commands as NAME (no NAME: the agent's own user)"),
    ":env": ("[K=V | -u K]", "set (or with -u unset) a variable for later commands; no argument lists them"),
    ":last": ("", "outcome and exit status of the last command per host, grouped"),
    ":jobs": ("", "the detached jobs (run --detach) each targeted host's agent keeps"),
    ":attach": ("JOB", "replay job JOB's output on the targeted hosts and follow it to its end (Ctrl-C ends the job)"),
    ":kill": ("JOB [SIG]", "signal job JOB's whole process tree on the targeted hosts (default TERM; KILL after the grace)"),
    ":quit": ("", "close the connections and leave (Ctrl-D too)"),
}


def _is_plain_cd(line: str) -> bool:
    """A lone `cd [DIR]`: it would only move a shell that exits straight after."""
    words = line.split()
    return words[0] == "cd" and len(words) <= 2 and not any(c in line for c in ";&|<>()`$")


@dataclass(slots=True)
class ReplSettings:
    """What applies to the lines run next; changed by `:mode`, `:timeout`, `:idle`, `:cd`, `:env`."""

    mode: str = "stream"
    timeout: float | None = None
    idle_timeout: float | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    kill_grace: float | None = None
    user: str | None = None

    def command(self, line: str) -> Command:
        return Command(shell=line, env=dict(self.env), cwd=self.cwd, timeout=self.timeout,
                       kill_grace=self.kill_grace, idle_timeout=self.idle_timeout, user=self.user)


class Repl:
    """An interactive session over `targets`.

    Args:
        targets: the hosts to connect to and target first.
        options: how to connect.
        display: where everything is written.
        inventory: for `@group` in `:target`/`:add`.
        via: gateways for the hosts `:target`/`:add` name (`--via`), instead of the inventory's.
        fanout: hosts connecting or running at once.
        settings: the initial mode, timeout, cwd, env and cancel grace.
    """

    def __init__(self, targets: list[Target], options: ConnectOptions, display: Display,
                 inventory: Inventory | None = None, fanout: int = 64,
                 settings: ReplSettings | None = None, via: str | None = None) -> None:
        self.display = display
        self.inventory = inventory
        self.via = via
        self.settings = settings or ReplSettings()
        self._notices: collections.deque[str] = collections.deque()
        self.session = Session(targets, options, self._notices.append, fanout=fanout)
        self.current = [t.name for t in targets]
        self.last: list[Result] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve_loop, name="shoal-shell-loop", daemon=True)
        self._editor = LineEditor(display, COMMANDS, lambda: self.session.links)
        self._last_down: set[str] = set()  # hosts the last line skipped, not connected

    # -- main loop -----------------------------------------------------------

    def run(self) -> int:
        """Connect, read and run lines until :quit or end of input; 0 (HubNotRunning
        before any prompt when the hub is not running)."""
        self._thread.start()
        try:
            if self.session.options.hub is not None:  # a hub that is not running is one line, as for `run`
                self._submit(self.session.options.hub.open())
            self._submit(self.session.connect(self.current))
            self._report_connected()
            self._editor.setup()
            self._read_loop()
        finally:
            self._editor.save_history()
            self._close()
        return 0

    def _read_loop(self) -> None:
        while True:
            self._flush_notices()
            try:
                line = input(self.prompt())
            except EOFError:
                self.display.out(b"\n")
                return
            except KeyboardInterrupt:
                self.display.out(b"\n")
                continue
            try:
                if not self.handle(line):
                    return
            except ConfigError as exc:
                self.display.error(str(exc))
            except KeyboardInterrupt:
                self.display.out(b"\n")

    def prompt(self) -> str:
        """`shoal [12 hosts, 1 failed, 2 down]> `: targets, last failures, hosts not connected."""
        parts = [f"{len(self.current)} host{'s' if len(self.current) != 1 else ''}"]
        failed = sum(1 for r in self.last if not r.ok and r.host not in self._last_down)
        if failed:
            parts.append(f"{failed} failed")
        down = sum(1 for n in self.current if self.session.links[n].state is not LinkState.CONNECTED)
        if down:
            parts.append(f"{down} down")
        return f"shoal [{', '.join(parts)}]> "

    def handle(self, line: str) -> bool:
        """Act on one typed line; False means leave."""
        text = line.strip()
        if not text:
            return True
        if not text.startswith(":"):
            if _is_plain_cd(text):
                where = text.split()[1] if len(text.split()) > 1 else ""
                self.display.message(f"shoal: each line runs in a new shell, so `{text}` would change nothing; "
                                     f"use :cd {where or 'DIR'}")
                return True
            self.run_command(text)
            return True
        name, _, arg = text.partition(" ")
        if name not in COMMANDS:
            raise ConfigError(f"unknown shell command {name} (try :help)")
        if name == ":quit":
            return False
        getattr(self, "cmd_" + name[1:])(arg.strip())
        return True

    # -- running lines ---------------------------------------------------------

    def run_command(self, line: str) -> None:
        """Run `line` on the current hosts; Ctrl-C cancels, kills, then stops waiting."""
        self._run(self.settings.command(line))

    def _run(self, command: Command) -> None:
        """Run `command` (a line, or an attach) on the current hosts and keep its results for :last."""
        if not self.current:
            raise ConfigError("no hosts targeted (use :target or :add)")
        future = asyncio.run_coroutine_threadsafe(self._run_line(command), self._loop)
        presses = 0
        while True:
            try:
                self.last = future.result()
                break
            except KeyboardInterrupt:
                presses += 1
                if not self._interrupt(presses, future):
                    return
        self._flush_notices()
        failed = any(not r.ok and r.host not in self._last_down for r in self.last)
        if failed and len(self.last) > 1 and self.settings.mode == "stream":
            self.display.message(summary_line(self.last))

    def _interrupt(self, presses: int, future: Any) -> bool:
        """Escalate one Ctrl-C; False once we stop waiting for the hosts."""
        if presses == 1:
            self.display.message("shoal: cancelling on every host (Ctrl-C again to kill)")
            self._loop.call_soon_threadsafe(self.session.cancel, self.settings.kill_grace)
        elif presses == 2:
            self.display.message("shoal: killing (Ctrl-C again to stop waiting)")
            self._loop.call_soon_threadsafe(self.session.kill)
        else:
            future.cancel()
            self.display.message("shoal: stopped waiting; some hosts may still be running it")
            return False
        return True

    async def _run_line(self, command: Command) -> list[Result]:
        names = list(self.current)
        handler: StreamHandler | GatherHandler
        if self.settings.mode == "gather":
            handler = GatherHandler(self.display)
        else:
            handler = StreamHandler(self.display, names)
        down = [n for n in names if n not in self.session.connected(names)]
        self._last_down = set(down)
        results = await self.session.run(command, handler, names)
        handler.close()
        if down:
            self.display.warning(f"not run on {len(down)} host{'s' if len(down) != 1 else ''} "
                                 f"not connected: {NodeSet(down)}")
        return results

    # -- : commands --------------------------------------------------------------

    def cmd_help(self, arg: str) -> None:
        width = max(len(f"{n} {a}") for n, (a, _) in COMMANDS.items())
        self.display.print("Lines run on every targeted host via /bin/sh. Shell commands:")
        for name, (args, text) in COMMANDS.items():
            self.display.print(f"  {(name + ' ' + args).strip():<{width}}  {text}")
        self.display.print("Ctrl-C cancels a running command on every host; at the prompt it clears the line.")

    def cmd_hosts(self, arg: str) -> None:
        links = list(self.session.links.values())
        width = max(len(link.name) for link in links)
        now = self._loop.time()
        for link in links:
            mark = "*" if link.name in self.current else " "
            detail = link.error or ""
            if link.state is LinkState.CONNECTED and link.client is not None:
                detail = f"agent {link.client.agent_version}".strip()
            elif link.state is LinkState.RECONNECTING and link.next_try is not None:
                detail += f"; next try in {max(0.0, link.next_try - now):.0f}s"
            self.display.print(f"{mark} {link.name:<{width}}  {link.state.value:<12}  {detail}".rstrip())

    def cmd_target(self, arg: str) -> None:
        self.current = self._select(arg, connect=True)
        self._report_targets()

    def cmd_add(self, arg: str) -> None:
        chosen = self._select(arg, connect=True)
        self.current += [n for n in chosen if n not in self.current]
        self._report_targets()

    def cmd_drop(self, arg: str) -> None:
        gone = set(self._select(arg, connect=False))
        self.current = [n for n in self.current if n not in gone]
        self._report_targets()

    def cmd_mode(self, arg: str) -> None:
        if arg not in ("stream", "gather"):
            raise ConfigError(f":mode takes stream or gather, not {arg!r}")
        self.settings.mode = arg
        self.display.message(f"output mode: {arg}")

    def cmd_timeout(self, arg: str) -> None:
        self.settings.timeout = _seconds_or_off(":timeout", arg)
        self.display.message(f"timeout: {self.settings.timeout:g}s" if self.settings.timeout else "timeout: off")

    def cmd_idle(self, arg: str) -> None:
        self.settings.idle_timeout = _seconds_or_off(":idle", arg)
        idle = self.settings.idle_timeout
        self.display.message(f"idle timeout: {idle:g}s" if idle else "idle timeout: off")

    def cmd_cd(self, arg: str) -> None:
        self.settings.cwd = arg or None
        self.display.message(f"working directory: {arg or '(agent default)'}")

    def cmd_user(self, arg: str) -> None:
        self.settings.user = arg or None
        self.display.message("user: " + (arg or "(the agent's own)"))

    def cmd_env(self, arg: str) -> None:
        if not arg:
            for name, value in self.settings.env.items():
                self.display.print(f"{name}={value}")
            return
        if arg.startswith("-u "):
            self.settings.env.pop(arg[3:].strip(), None)
            return
        name, sep, value = arg.partition("=")
        if not sep or not name or " " in name:
            raise ConfigError(f"bad environment setting {arg!r} (expected NAME=VALUE)")
        self.settings.env[name] = value

    def cmd_last(self, arg: str) -> None:
        """One line per outcome of the last line: `failed (code 4)  status 4     3  web[1-3]`."""
        if not self.last:
            self.display.message("no command has run yet")
            return
        groups: dict[tuple[int, int, str], list[str]] = {}
        for r in self.last:
            groups.setdefault((HOST_OUTCOMES.index(r.outcome), r.status, r.outcome_text), []).append(r.host)
        width = max(len(text) for _, _, text in groups)
        for (_, status, text), hosts in sorted(groups.items()):
            self.display.print(f"{text:<{width}}  status {status:<3}  {len(hosts):>4}  {NodeSet(hosts)}")

    def cmd_jobs(self, arg: str) -> None:
        answers = self._on_jobs(listing())
        for row in format_jobs(answers).splitlines():
            self.display.print(row)

    def cmd_attach(self, arg: str) -> None:
        """Follow a job as `shoal attach` does: its kept output, then live, then its outcome."""
        words = arg.split()
        if len(words) != 1:
            raise ConfigError(":attach takes one job id (:jobs lists them)")
        self._run(Command(attach=words[0]))

    def cmd_kill(self, arg: str) -> None:
        """Signal a job's tree on the targeted hosts, one line per host, as `shoal kill` does."""
        words = arg.split()
        if len(words) not in (1, 2):
            raise ConfigError(":kill takes a job id and an optional signal (:kill JOB [SIG])")
        job = words[0]
        sig = parse_signal(words[1], ":kill") if len(words) == 2 else int(signal.SIGTERM)
        for answer in self._on_jobs(killing(job, sig)):
            if answer.error is not None:
                self.display.error(f"{answer.host}: {kill_report(answer, job)}")
            else:
                self.display.print(f"{answer.host}: {kill_report(answer, job)}")

    def _on_jobs(self, action: Action) -> list[JobsAnswer]:
        """`action` on every connected targeted host's connection, in target order."""
        names = self.session.connected(list(self.current))

        async def everywhere() -> list[JobsAnswer]:
            return await fan_out(names, lambda n: ask(n, self.session.links[n].client, action))

        return asyncio.run_coroutine_threadsafe(everywhere(), self._loop).result()

    # -- targets -------------------------------------------------------------

    def _select(self, pattern: str, connect: bool) -> list[str]:
        """Names for a pattern: globs match known hosts, the rest is host list syntax.

        A pattern with `!`, `&` or `^` is one set expression, evaluated whole (no globs),
        so the operators apply left to right across its commas as everywhere else.
        """
        if not pattern:
            raise ConfigError("give a host pattern (e.g. web[01-04] or 'web*')")
        if any(op != "," for op, _piece in split_expression(pattern)):
            return self._known_or_new(pattern, connect)
        names: list[str] = []
        for element in split_patterns(pattern):
            if "*" in element or "?" in element:
                found = [n for n in self.session.links if fnmatch.fnmatchcase(n, element)]
                if not found:
                    raise ConfigError(f"no known host matches {element!r}")
                names += found
            else:
                names += self._known_or_new(element, connect)
        return list(dict.fromkeys(names))

    def _known_or_new(self, element: str, connect: bool) -> list[str]:
        if element in self.session.links:
            return [element]
        targets = parse_targets(element, inventory=self.inventory, via=self.via)
        if not connect:
            return [t.name for t in targets]
        names = self._submit(self._add_hosts(targets))
        return names or []

    async def _add_hosts(self, targets: list[Target]) -> list[str]:
        names = self.session.add(targets)
        await self.session.connect(names)
        return names

    def _report_targets(self) -> None:
        self._flush_notices()
        self.display.message(f"targets: {len(self.current)} host{'s' if len(self.current) != 1 else ''}"
                             + (f" ({NodeSet(self.current)})" if self.current else ""))

    def _report_connected(self) -> None:
        self._flush_notices()
        up = [n for n in self.current if self.session.links[n].state is LinkState.CONNECTED]
        self.display.message(f"connected to {len(up)} of {len(self.current)} hosts; :help lists commands")

    def _flush_notices(self) -> None:
        while self._notices:
            self.display.warning(self._notices.popleft())

    # -- the loop thread -------------------------------------------------------

    def _serve_loop(self) -> None:
        """Run the loop with the interrupt signals blocked in this thread.

        The kernel hands a process-wide signal to any thread that does not block it.
        Were Ctrl-C's SIGINT given to this thread, Python would note it for the main
        thread, but the main thread would sit on in readline's select() until the next
        key: the Ctrl-C would look ignored.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
        self._loop.run_forever()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run `coro` on the loop and wait; Ctrl-C abandons it and returns None."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            self.display.out(b"\n")
            return None

    def _close(self) -> None:
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self.session.close(), self._loop)
            try:
                future.result(CLOSE_WAIT)
            except (TimeoutError, KeyboardInterrupt):
                future.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_WAIT)
        if not self._loop.is_running():
            self._loop.close()


def _seconds_or_off(command: str, arg: str) -> float | None:
    """`:timeout` and `:idle`'s argument: positive seconds, or None for off."""
    if arg in ("off", "0", "none"):
        return None
    try:
        seconds = float(arg)
    except ValueError:
        raise ConfigError(f"{command} takes seconds or off, not {arg!r}") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{command} must be positive, not {arg!r}")
    return seconds
