"""Gathered output for the shell and batch files: identical outputs printed once.

Stdout lines are kept in a MsgTree per run and printed at the end, one block per
distinct output under the folded set of hosts that produced it (clush -b style);
stderr lines are not gathered but streamed at once with a host prefix, so
errors are seen while the command still runs.
"""

from __future__ import annotations

from .display import Display
from .msgtree import MsgTree
from .nodeset import NodeSet
from .output import LINE_CAP, StreamHandler, decode_for_display
from .result import Result

__all__ = ["GatherPrinter"]


class GatherPrinter:
    """A fleet Handler that gathers stdout until `close()` prints it."""

    def __init__(self, display: Display, hosts: list[str]) -> None:
        self.display = display
        self.tree = MsgTree()
        self._errors = StreamHandler(display, hosts)
        self._partial: dict[str, bytes] = {}

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        if stream != "stdout":
            self._errors.on_output(host, stream, data)
            return
        lines = (self._partial.pop(host, b"") + data).split(b"\n")
        rest = lines.pop()
        while len(rest) > LINE_CAP:
            lines.append(rest[:LINE_CAP])
            rest = rest[LINE_CAP:]
        if rest:
            self._partial[host] = rest
        for line in lines:
            self.tree.add(host, line)

    def on_result(self, result: Result) -> None:
        rest = self._partial.pop(result.host, None)
        if rest:
            self.tree.add(result.host, rest)
        self._errors.on_result(result)

    def close(self) -> None:
        """Print each distinct output once under its folded host set."""
        for lines, hosts in self.tree.walk():
            header = f"{NodeSet(hosts)} ({len(hosts)})"
            rule = "-" * min(max(len(header), 15), 79)
            self.display.print(self.display.paint(f"{rule}\n{header}\n{rule}", "1;36"))
            self.display.out(b"".join(decode_for_display(line).encode() + b"\n" for line in lines))
        self.tree = MsgTree()
