"""One call for scripts: run a command on a target pattern, get every host's output back.

    outputs = shoal.controller.run("web[1-3]", "uptime", key_file="fleet.key", timeout=30)
    for host, out in outputs.items():
        print(host, out.outcome_text, out.stdout.decode())

The top rung of the library's ladder, as ClusterShell's `task.run` and parallel-ssh's
`run_command`: `Fleet.run` with a handler that keeps each host's output in memory,
so it suits commands whose output fits there; stream with `Fleet` otherwise.
`run` blocks on its own event loop, so it refuses to run on a thread whose loop is
running (a notebook cell, an async function) rather than stall that loop: there,
`await run_async(...)`, which takes the same arguments.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace

from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey

from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.result import Result
from shoal.controller.targets import Target

__all__ = ["HostOutput", "run", "run_async"]


@dataclass(frozen=True, slots=True)
class HostOutput:
    """One host's command: its status, all its output, and what came of it.

    `outcome` is one word of the one vocabulary (`Result.outcome`, listed in
    `shoal.controller.outcome.HOST_OUTCOMES`): `ok`, `failed` (another exit status,
    or the agent could not start it, e.g. not found: status 127), `signal`,
    `timed_out`, `idle_timeout`, `cancelled`, `unreachable`, `auth_failed`, `denied`,
    `lost`; `outcome_text` adds what exactly (`failed (code 3)`). `result` has the
    rest (exit code, signal, duration).
    """

    host: str
    status: int
    stdout: bytes
    stderr: bytes
    outcome: str
    result: Result

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def outcome_text(self) -> str:
        """The outcome with what exactly, as shoal's text outputs print it:
        `failed (code 3)`, `signal (KILL)`, `unreachable: connection refused`."""
        return self.result.outcome_text


def outcome_of(result: Result) -> str:
    """The one-word outcome of `result` (see `HostOutput`)."""
    return str(result.outcome)


class _Keep:
    """A fleet handler that keeps every byte, per host and stream."""

    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {}
        self.err: dict[str, bytearray] = {}

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        (self.out if stream == "stdout" else self.err).setdefault(host, bytearray()).extend(data)

    def on_result(self, result: Result) -> None:
        pass


async def run_async(pattern: str, command: str | list[str], *, key_file: str | None = None,
                    timeout: float | None = None, connect_timeout: float = 10.0, fanout: int = 64,
                    env: dict[str, str] | None = None, cwd: str | None = None,
                    inventory: str | None = None, idle_timeout: float | None = None,
                    via: str | None = None) -> dict[str, HostOutput]:
    """`run` for code already in an event loop; see `run`."""
    from shoal.controller.inventory import load_inventory
    from shoal.controller.targets import parse_targets
    from shoal.hostio.keyfile import load_key_file

    targets = parse_targets(pattern, inventory=load_inventory(inventory), via=via)
    if not targets:
        raise ConfigError("no hosts match", pattern)
    default_key = load_key_file(os.path.expanduser(key_file)) if key_file else None

    def key_for(target: Target) -> SharedKey | None:
        return load_key_file(os.path.expanduser(target.key_file)) if target.key_file else default_key

    cmd = Command(shell=command) if isinstance(command, str) else Command(argv=list(command))
    cmd = replace(cmd, env=dict(env or {}), cwd=cwd, timeout=timeout, idle_timeout=idle_timeout)
    keep = _Keep()
    async with ConnectOptions(timeout=connect_timeout, key_for=key_for) as options:
        results = (await Fleet(targets, options, fanout).run(cmd, keep)).by_host()
    return {t.name: HostOutput(t.name, results[t.name].status, bytes(keep.out.get(t.name, b"")),
                               bytes(keep.err.get(t.name, b"")), outcome_of(results[t.name]), results[t.name])
            for t in targets}


def run(pattern: str, command: str | list[str], *, key_file: str | None = None,
        timeout: float | None = None, connect_timeout: float = 10.0, fanout: int = 64,
        env: dict[str, str] | None = None, cwd: str | None = None,
        inventory: str | None = None, idle_timeout: float | None = None,
        via: str | None = None) -> dict[str, HostOutput]:
    """Run `command` on every host `pattern` names and wait for all of them.

    Args:
        pattern: targets as `shoal run` takes them (`web[1-3]`, `@group`, `10.0.0.7:8471`).
        command: a string for /bin/sh -c (as ssh), or an argv list run without a shell.
        key_file: the shared key (an inventory entry's own key_file wins for its host).
        timeout: kill each host's command tree after this many seconds.
        idle_timeout: kill it once it has printed nothing for this many seconds.
        connect_timeout, fanout: as `--connect-timeout` and `--fanout`.
        env, cwd: added environment and working directory on the hosts.
        inventory: inventory file; None: $SHOAL_INVENTORY or ~/.config/shoal/inventory.toml.
        via: gateways to reach every host through, as `--via` (`gw1` or `gw1,gw2`).

    Returns:
        host name -> its `HostOutput`, in target order. A host's failure (down,
        timed out, non-zero exit) is its result, never an exception.

    Raises:
        ConfigError: a bad pattern, inventory or key file.
        RuntimeError: called on a thread with a running event loop; use `await run_async(...)`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("shoal.controller.run() blocks, and this thread runs an event loop "
                           "(a notebook cell or an async function): use "
                           "`await shoal.controller.run_async(...)` there, with the same arguments")
    return asyncio.run(run_async(pattern, command, key_file=key_file, timeout=timeout,
                                 connect_timeout=connect_timeout, fanout=fanout, env=env, cwd=cwd,
                                 inventory=inventory, idle_timeout=idle_timeout, via=via))
