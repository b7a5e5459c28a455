"""`shoal run --script FILE`: ship a local script and run it on every host.

Like `ssh host bash -s -- ARGS < script`: nothing is copied to the host's disk;
the script is the command's standard input. A `#!` line picks the interpreter;
shells read a script from stdin with `-s -- ARGS`, other interpreters (python,
perl, ruby, node) take `-` as the script name followed by the arguments.
Without a `#!` line the script runs under /bin/sh.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from shoal.protocol.errors import ConfigError

from shoal.controller.remote import Command

__all__ = ["script_command", "read_script", "interpreter_argv"]

# Interpreters that take a script on stdin as `-s -- ARGS` rather than `- ARGS`.
_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})


def read_script(path: str) -> bytes:
    """The script's bytes; ConfigError naming the path if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read script: {exc.strerror or exc}", path) from None


def interpreter_argv(script: bytes, args: list[str], where: str) -> list[str]:
    """The argv that runs `script` from stdin with `args`, honouring its `#!` line."""
    if not script.startswith(b"#!"):
        return ["/bin/sh", "-s", "--", *args]
    first = script.split(b"\n", 1)[0][2:].decode("utf-8", "replace")
    words = shlex.split(first) if first.strip() else []
    if not words:
        raise ConfigError("the #! line names no interpreter", f"{where}:1")
    program = os.path.basename(words[-1] if os.path.basename(words[0]) == "env" and len(words) > 1 else words[0])
    if program in _SHELLS:
        return [*words, "-s", "--", *args]
    return [*words, "-", *args]


def script_command(path: str, args: list[str], base: Command) -> tuple[Command, bytes]:
    """The command to run and the bytes to feed it, for `run --script`."""
    script = read_script(path)
    argv = interpreter_argv(script, args, path)
    return Command(argv=argv, env=base.env, cwd=base.cwd, timeout=base.timeout, stdin=True,
                   detach=base.detach, kill_grace=base.kill_grace), script
