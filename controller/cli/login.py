"""An interactive login shell on one host, as `ssh HOST` gives.

    shoal login [options] HOST

The agent starts the remote user's login shell on a pseudo-terminal of the local
window's size, and follows the window when it changes. With the local side on a
terminal, keys go through raw (Ctrl-C, Ctrl-Z and Ctrl-D act on the remote shell)
and the terminal's modes are restored however shoal ends. -u/--user NAME logs in
as NAME (the agent must run as root and the key allow NAME).

Exit status: the remote shell's (128+N when killed by signal N); 255 when the host
was unreachable, refused the login or was lost; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from shoal.protocol.defaults import DATA_CHUNK
from shoal.protocol.errors import ConfigError, ErrorCode, RemoteCommandError

from shoal.controller.remote import Command, RemoteProcess
from shoal.controller.cli.options import (
    add_connect_options,
    add_user_option,
    connect_options_from_args,
    targets_from_args,
)
from shoal.controller.outcome import Outcome
from shoal.controller.result import UNREACHABLE
from shoal.controller.client import AgentClient
from shoal.controller.targets import Target
from shoal.controller.term.display import Display
from shoal.controller.term.rawtty import is_terminal, on_resize, raw_terminal, terminal_size

__all__ = ["add_arguments", "run", "LOGIN_SHELL"]

# The user's shell from the user database (the agent sets SHELL for --user), as a
# login shell: `-l` is understood by sh, dash, bash, zsh, ksh and fish.
LOGIN_SHELL = 'exec "${SHELL:-/bin/sh}" -l'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", metavar="HOST", help="the one host to log in to (a name, address or unix:PATH)")
    parser.add_argument("--inventory", metavar="PATH", help="inventory file (default: the user's)")
    parser.set_defaults(exclude=None, yes=False)
    add_user_option(parser)
    add_connect_options(parser)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError("shoal login takes no command (use shoal run --pty HOST -- COMMAND)", "command")
    targets = targets_from_args(args)
    if len(targets) != 1:
        raise ConfigError(f"shoal login takes one host; {args.targets!r} names {len(targets)}", "HOST")
    target = targets[0]
    rows, cols = terminal_size(0, 1)
    command = Command(shell=LOGIN_SHELL, stdin=True, pty=True, rows=rows, cols=cols, user=args.user)
    return asyncio.run(login(target, command, args, display))


async def login(target: Target, command: Command, args: argparse.Namespace, display: Display) -> int:
    """Run the login shell with the local terminal attached; its exit status."""
    async with connect_options_from_args(args) as options:
        return await _login(await options.connect(target), command, display)


async def _login(client: AgentClient, command: Command, display: Display) -> int:
    target = client.target
    try:
        try:
            proc = await client.exec(command)
        except RemoteCommandError as exc:
            display.error(f"{target.name}: {exc.reason}")
            return exc.status if exc.status is not None else UNREACHABLE
        if proc.result is not None and proc.result.error is not None:
            display.error(f"{target.name}: {proc.result.error}")
            lost = proc.result.error_code in (Outcome.CONNECTION_LOST, ErrorCode.PERMISSION_DENIED)
            return UNREACHABLE if lost else proc.result.status
        return await _attached(proc, display)
    finally:
        await client.close()


async def _attached(proc: RemoteProcess, display: Display) -> int:
    stdin = sys.stdin.fileno()
    terminal = is_terminal(stdin)
    feeder = asyncio.get_running_loop().create_task(_feed(proc, stdin))
    try:
        with contextlib.ExitStack() as local:
            if terminal:
                local.enter_context(raw_terminal(stdin))
                local.enter_context(on_resize(proc.resize, stdin, sys.stdout.fileno()))
            async for event in proc:
                display.out(event.data)
            result = await proc.wait()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    if result.error is not None:
        display.error(f"{proc.host}: {result.error}")
    return result.status


async def _feed(proc: RemoteProcess, fd: int) -> None:
    """Local keys (or piped input) to the remote terminal; the input's end as its EOF.

    The read happens in the reader callback, when the fd is readable, so it never
    blocks the loop (stdin stays a blocking fd: it is shared with our parent).
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, DATA_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        chunks.put_nowait(data)

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError, OSError):  # a regular file (or closed stdin): read it now
        data = os.read(fd, DATA_CHUNK) if _readable(fd) else b""
        while data:
            await proc.write(data)
            data = os.read(fd, DATA_CHUNK)
        proc.close_stdin()
        return
    try:
        while data := await chunks.get():
            await proc.write(data)
        proc.close_stdin()
    finally:
        loop.remove_reader(fd)


def _readable(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
