"""Batch files: a list of commands every host runs in order over one connection.

The file holds one command per line; blank lines and lines starting with `#`
are skipped and a trailing backslash joins the next line, as in a shell script.
Each host walks the list on its own connection, hosts in parallel up to the
fan-out. Like `set -e`, a host stops at its first failing command unless
`keep_going`; its later commands are counted as skipped. A host that cannot be
reached, or is lost, fails the command it was on and skips the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from shoal.protocol.errors import ConfigError, ShoalError

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command, Running
from shoal.controller.fleet import ConnectOptions, Handler
from shoal.controller.nodeset import NodeSet
from shoal.controller.outcome import Outcome
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target
from shoal.controller.fanout import per_gateway
from shoal.controller.waves import SKIPPED_STATUS, WavePolicy, run_in_waves

__all__ = ["BatchLine", "BatchReport", "BatchRunner", "parse_batch", "read_batch", "summary_table"]

# Widest command text shown in the summary table before it is cut.
COMMAND_COLUMN = 40


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One command of a batch file and the line it starts on (1-based)."""

    text: str
    line: int


def parse_batch(text: str, where: str) -> list[BatchLine]:
    """Split a batch file into commands.

    Raises:
        ConfigError: a continued line runs off the end, or there are no commands;
            `where` is `path:line`.
    """
    commands: list[BatchLine] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        commands.append(BatchLine("".join(pending + [raw]).strip(), start))
        pending = []
    if pending:
        raise ConfigError("the last command ends with a backslash but no line follows", f"{where}:{start}")
    commands = [c for c in commands if c.text]
    if not commands:
        raise ConfigError("no commands in the batch file", where)
    return commands


def read_batch(path: str, stdin: BinaryIO) -> list[BatchLine]:
    """Read and parse FILE, or standard input for `-`."""
    where = "<stdin>" if path == "-" else path
    try:
        data = stdin.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read batch file: {exc.strerror or exc}", where) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError("batch file is not UTF-8 text", f"{where}:{line}") from None
    return parse_batch(text, where)


@dataclass(slots=True)
class BatchReport:
    """Per host, the result of each command in order; None where it was skipped."""

    lines: list[BatchLine]
    results: dict[str, list[Result | None]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # hosts a stopped rolling run never started

    def host_status(self, host: str) -> int:
        """The largest status among the commands the host ran."""
        return max((r.status for r in self.results[host] if r is not None), default=0)

    @property
    def status(self) -> int:
        """The batch's exit status: the largest per-host status (a skipped host's is 1)."""
        ran = max((self.host_status(h) for h in self.results), default=0)
        return max(ran, SKIPPED_STATUS) if self.skipped else ran

    def outcome(self, index: int) -> tuple[list[str], list[str], list[str]]:
        """Hosts that succeeded, failed and skipped command `index`."""
        ok: list[str] = []
        failed: list[str] = []
        skipped: list[str] = []
        for host, results in self.results.items():
            r = results[index]
            (skipped if r is None else ok if r.ok else failed).append(host)
        return ok, failed, skipped


def summary_table(report: BatchReport) -> list[str]:
    """Rows of the end-of-batch table: per command, ok / failed / skipped with host sets."""
    rows = [["#", "COMMAND", "OK", "FAILED", "SKIPPED"]]
    for i, line in enumerate(report.lines):
        text = " ".join(line.text.split())  # a label: continuation indents would break the columns
        text = text if len(text) <= COMMAND_COLUMN else text[:COMMAND_COLUMN - 3] + "..."
        rows.append([str(i + 1), text] + [_cell(hosts) for hosts in report.outcome(i)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _cell(hosts: list[str]) -> str:
    return f"{len(hosts)} {NodeSet(hosts)}" if hosts else "0"


class BatchRunner:
    """Runs a batch on many hosts.

    Args:
        targets: the hosts, in display order.
        options: how to connect.
        fanout: hosts connected and running at once.
        keep_going: run every command even after one fails on that host.
    """

    def __init__(self, targets: list[Target], options: ConnectOptions, fanout: int = 64,
                 keep_going: bool = False) -> None:
        self.targets = targets
        self.options = options
        self.fanout = max(1, fanout)
        self.keep_going = keep_going
        self._running = Running()

    async def run(self, lines: list[BatchLine], commands: list[Command],
                  handler_for: Callable[[int], Handler], *, policy: WavePolicy = WavePolicy(),
                  on_wave: Callable[[int, int, list[str]], None] | None = None) -> BatchReport:
        """Run `commands` (one per line) on every host; never raises for one host's sake.

        `handler_for(i)` gives the handler that receives command i's events. `policy`
        rolls the hosts in waves with a failure budget (`shoal.controller.waves`): a
        host fails when any of its commands does; hosts never started are listed in
        `BatchReport.skipped` and reported to command 1's handler as `skipped`.
        """
        report = BatchReport(lines, {t.name: [None] * len(commands) for t in self.targets})
        count = len(self.targets)

        def done(result: Result) -> None:
            if result.error_code == Outcome.SKIPPED:
                report.skipped.append(result.host)
                handler_for(0).on_result(result)

        wave_hosts = None if on_wave is None else (
            lambda n, total, items: on_wave(n, total, [t.name for _, t in items]))
        await run_in_waves(list(enumerate(self.targets)),
                           lambda it: self._host(it[1], [c.for_node(it[1].name, it[0], count) for c in commands],
                                                 handler_for, report.results[it[1].name]),
                           lambda it: it[1].name, policy=policy, limit=per_gateway(self.fanout, lambda it: it[1]),
                           on_done=done, on_wave=wave_hosts)
        return report

    async def _host(self, target: Target, commands: list[Command], handler_for: Callable[[int], Handler],
                    results: list[Result | None]) -> Result:
        """Run one host's commands; its Result for the failure budget is its first failure, if any."""
        await self._walk(target, commands, handler_for, results)
        ran = [r for r in results if r is not None]
        return next((r for r in ran if not r.ok), ran[-1] if ran else Result(target.name, 0, cancelled=True))

    async def _walk(self, target: Target, commands: list[Command], handler_for: Callable[[int], Handler],
                    results: list[Result | None]) -> None:
        if self._running.stopping:
            return
        try:
            client = await self.options.connect(target)
        except ShoalError as exc:
            failed = results[0] = failure_result(target.name, exc)
            handler_for(0).on_result(failed)
            return
        try:
            for i, command in enumerate(commands):
                if self._running.stopping:
                    return
                result = results[i] = await self._one(client, target.name, command, handler_for(i))
                if result.unreachable or (not result.ok and not self.keep_going):
                    return
        finally:
            await client.close()

    async def _one(self, client: AgentClient, host: str, command: Command, handler: Handler) -> Result:
        handler.on_start(host)
        try:
            proc = await client.exec(command)
        except ShoalError as exc:
            result = failure_result(host, exc)
        else:
            self._running.add(host, proc)
            try:
                async for event in proc:
                    handler.on_output(host, event.stream, event.data)
                result = await proc.wait()
            finally:
                self._running.remove(host)
        handler.on_result(result)
        return result

    def cancel(self, grace: float | None = None) -> None:
        """Cancel the running commands (SIGINT, SIGTERM, SIGKILL); start no more."""
        self._running.cancel(grace)

    def kill(self) -> None:
        self._running.kill()
