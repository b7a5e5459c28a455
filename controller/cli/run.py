"""Run a command on every target and stream its output back.

    shoal run [options] TARGETS [options] [--] COMMAND...

shoal's options come before the command: the first word after TARGETS that does not
start with `-` starts it, and every word from there on is the command's, so
`shoal run web1 sed -n 1p f` runs `sed -n 1p f`. The words are joined and run by
/bin/sh on each host, like ssh does (`--argv` runs them as an argv without a shell).
Standard input is forwarded to every host when it is not a terminal (`-n` to disable).
With --pty each host runs the command on a pseudo-terminal of the local window's
size; typed keys go to it raw and piped input ends with the terminal's EOF (^D).
--user NAME runs the command as NAME (the agent must run as root and the key allow NAME).

A command starts in the remote user's home directory (--cwd to change it), with
SHOAL_HOST, SHOAL_NODENUM (0-based, in target order) and SHOAL_NUMNODES set.

Exit status: 0 when every host exited 0; otherwise the largest host status
(1-254; 128+N when killed by signal N); 255 when a host was unreachable, failed
authentication, timed out or was lost; a run that --max-fail or --canary stopped
exits with the largest status among the hosts that ran, or 1 when all of those
exited 0 (skipped hosts count as status 1); 2 bad usage, configuration or target
pattern; 70 internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace

from shoal.protocol.errors import ConfigError

from shoal.controller.remote import Command
from shoal.controller.term.display import Display
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.term.interrupt import run_interruptible
from shoal.controller.term.rawtty import on_resize, raw_terminal, terminal_size
from shoal.controller.cli.options import (
    add_connect_options,
    add_exec_options,
    add_output_options,
    add_rolling_options,
    add_target_options,
    command_from_args,
    connect_options_from_args,
    run_with,
    parse_env,
    targets_from_args,
    wave_policy_from_args,
)
from shoal.controller.fdlimit import raise_open_files_limit
from shoal.controller.term.handler import OutputHandler
from shoal.controller.term.output import choose_output
from shoal.controller.result import Result
from shoal.controller.stdin import StdinSpool
from shoal.controller.targets import Target

# The words after TARGETS and shoal's options are the command's (controller/cli/words.py).
TAKES_COMMAND = True

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    add_exec_options(parser)
    parser.add_argument("--script", metavar="FILE", help="run this local script on each host (fed on stdin, "
                        "like ssh host bash -s); the words after TARGETS become its arguments; honours #!")
    add_connect_options(parser)
    add_rolling_options(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    targets = targets_from_args(args)
    options = connect_options_from_args(args)
    if args.script and args.detach:
        raise ConfigError("cannot go with --detach (a job's stdin is /dev/null, so the script would not reach it)",
                          "--script")
    if args.script:
        command, script = script_from_args(args, words)
        return run_with(options, run_fleet(targets, command, options, args, display, False, script))
    command = command_from_args(args, words)
    # --pty on a terminal: keys go through raw as they are typed (controller/term/rawtty.py).
    # A job's stdin is /dev/null: nothing is forwarded with --detach.
    terminal = command.pty and not args.no_stdin and not args.detach and _isatty(0)
    forward_stdin = not args.no_stdin and not args.detach and (terminal or not _isatty(0))
    if command.pty:
        rows, cols = terminal_size(0, 1)
        command = replace(command, rows=rows, cols=cols)
    return run_with(options, run_fleet(targets, command, options, args, display, forward_stdin, terminal=terminal))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def choose_handler(args: argparse.Namespace, display: Display, targets: list[Target]) -> OutputHandler:
    """Pick the output handler once (the modes live in shoal.controller.term.output)."""
    if getattr(args, "diff", False) and getattr(args, "output", None) in ("stream", "json"):
        raise ConfigError(f"--diff compares gathered output; it does not go with -o {args.output}", "--diff")
    return choose_output(display, [t.name for t in targets], getattr(args, "output", None),
                         raw=getattr(args, "raw", False), outdir=getattr(args, "outdir", None),
                         failed_only=getattr(args, "failed_only", False),
                         max_output=getattr(args, "max_output", None), diff=getattr(args, "diff", False))


async def run_fleet(targets: list[Target], command: Command, options: ConnectOptions,
                    args: argparse.Namespace, display: Display, forward_stdin: bool,
                    script: bytes | None = None, terminal: bool = False) -> int:
    """Run on the fleet with Ctrl-C handling: first cancels everywhere, second gives up.

    With `terminal` (`--pty` on a terminal) the keys are forwarded raw as typed and
    window size changes follow; the terminal's modes are restored however it ends.
    """
    from shoal.controller.term.waveview import wave_reporter

    policy = wave_policy_from_args(args)
    raise_open_files_limit(min(len(targets), args.fanout))
    fleet = Fleet(targets, options, fanout=args.fanout)
    handler = choose_handler(args, display, targets)
    if terminal:
        stdin: StdinSpool | None = StdinSpool.from_terminal(sys.stdin.fileno())
    else:
        stdin = StdinSpool.from_fd(sys.stdin.fileno()) if forward_stdin else None
    if script is not None:
        stdin = StdinSpool.from_bytes(script)
    try:
        with contextlib.ExitStack() as local_terminal:
            if terminal:
                local_terminal.enter_context(raw_terminal(sys.stdin.fileno()))
                local_terminal.enter_context(on_resize(fleet.resize, sys.stdin.fileno(), sys.stdout.fileno()))
            result, interrupts = await run_interruptible(fleet.run(command, handler, stdin, policy=policy,
                                                                   on_wave=wave_reporter(display, handler)),
                                                         display, fleet.cancel, fleet.kill)
    finally:
        if stdin is not None:
            stdin.close()
    if result is None:
        return 130
    handler.close()
    if command.detach and getattr(args, "output", None) != "json":
        report_jobs(display, result.results)
    report_leftovers(display, result.results)
    if len(targets) > 1 and not getattr(args, "quiet", False):
        report_summary(display, result.results, result.elapsed)
    return 130 if interrupts else result.status


def report_jobs(display: Display, results: list[Result]) -> None:
    """`HOST: job ID` on stdout for each host that started the detached command."""
    for r in results:
        if r.job is not None:
            display.out(f"{r.host}: job {r.job}\n".encode("utf-8", "replace"))


def report_leftovers(display: Display, results: list[Result]) -> None:
    """One stderr line per host whose agent ended processes the command left holding its output."""
    for r in results:
        if r.leftovers_ended:
            noun = "process" if r.leftovers_ended == 1 else "processes"
            display.err(f"shoal: {r.host}: ended {r.leftovers_ended} leftover {noun} after the command exited\n"
                        .encode("utf-8", "replace"))


def report_summary(display: Display, results: list[Result], elapsed: float | None = None) -> None:
    """One line on stderr: ok / failed / unreachable counts with their host sets."""
    from shoal.controller.term.summary import summary_line

    display.message(summary_line(results, elapsed))


def script_from_args(options: argparse.Namespace, words: list[str]) -> tuple[Command, bytes]:
    """`run TARGETS --script FILE [ARGS]`: the command's words are the script's arguments."""
    from shoal.controller.script import script_command  # shlex and pathlib: --script only

    base = Command(env=parse_env(options.env), cwd=options.cwd, timeout=options.timeout,
                   detach=options.detach, kill_grace=options.kill_grace, idle_timeout=options.idle_timeout)
    return script_command(options.script, words, base)
