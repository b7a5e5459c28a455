"""Output handlers for fleet runs: chosen once, fed events, own all formatting.

Modes (`-o/--output`), one class each:

* `StreamHandler` (default on a TTY, and for many hosts when piped): lines as they
  arrive, prefixed `host: ` with aligned prefixes, stderr lines on stderr; each host
  that does not exit 0 gets a line on stderr when it ends, its outcome in the one
  vocabulary (`shoal: web03: failed (code 3)`, `Result.outcome_text`). `-q` hides those of hosts whose command ran and failed, never those of
  hosts that could not run it (unreachable, refused, lost).
* `RawHandler` (one host, stdout not a TTY, or `--raw`): bytes passed through untouched,
  so `shoal run h -- tar c /etc > etc.tar` gives a valid tarball.
* `GatherHandler` (`-o gather`): nothing until the run ends, then each distinct output
  once under the folded set of hosts that printed it, like dshbak / clush -b::

      ---------------
      web[01-05,07] (6)
      ---------------
      Linux 6.1.0

  stdout and stderr are gathered separately: stdout groups go to stdout, then stderr
  groups to stderr with `(stderr)` in their header, so `-o gather > file` keeps only
  stdout. A host's output without a final newline is shown with one. Hosts that did
  not exit 0 are listed last on stderr, one line per distinct outcome
  (`shoal: web[03,05]: failed (code 3)`). With `diff`, each distinct output is
  shown instead as a unified diff against the most common one (clush --diff). Gather
  holds output, so it is capped by default (controller/term/outputcap.py).
* `JsonHandler` (`-o json`): one JSON object per line per event; schema below.
* `FailedOnlyHandler` (`--failed-only`): no output during the run; afterwards one line
  per host that did not exit 0, `host: outcome` (with `-o json`: its `exit` event).

JSON schema (`-o json`; every object has `event` and `t`, seconds since the run began)::

    {"event": "start",  "host": H, "t": T}                       connected, command sent
    {"event": "output", "host": H, "t": T, "stream": "stdout"|"stderr",
     "data": TEXT}  or  "data_b64": BASE64                       lines not valid UTF-8
    {"event": "exit",   "host": H, "t": T, "status": N, "code": N|null,
     "signal": N|null, "timed_out": B, "cancelled": B, "duration": SECS,
     "error": TEXT|null, "error_code": TEXT|null, "ok": B, "unreachable": B,
     "leftovers_ended": N|null,                                 N: processes still holding
                                                                 the output, ended by the agent
     "outcome": OUTCOME}                                         ok, failed, signal, timed_out,
                                                                 idle_timeout, cancelled, unreachable,
                                                                 auth_failed, denied, lost, skipped
    {"event": "job",    "host": H, "t": T, "job": ID}             run --detach: the command
                                                                 started as job ID (no exit event)
    {"event": "wave", "t": T, "wave": N, "waves": N,
     "hosts": [H...]}                                            a wave starts (--serial, --canary)
    {"event": "summary", "t": T, "status": N, "ok": [H...],
     "failed": [H...], "unreachable": [H...], "skipped": [H...]} last line of the run

`output` data holds whole lines where it can: a host's stream is cut after its last
newline (or every LINE_CAP bytes of one long line); the final piece may lack one.
Valid lines stay `data` and only the invalid ones go to `data_b64`, so one piece may
become several events; a cut at LINE_CAP never splits a UTF-8 character (its start
waits for the next chunk). Concatenating a host's `output` events of one stream gives
its exact bytes. Hosts that never connected have only an `exit` event, with `error`
saying why.

Lines are split only for display, with a cap so one endless line cannot grow memory
without bound. Stream and gather lines go through controller/escape.py, so a host's
terminal controls are shown, not obeyed; raw passthrough and --outdir files keep the
exact bytes.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

from shoal.controller.term.display import Display
from shoal.controller.term.handler import OutputHandler
from shoal.controller.escape import escape_line, escape_text, json_safe
from shoal.controller.term.msgtree import MsgTree
from shoal.controller.nodeset import NodeSet, natural_key
from shoal.controller.term.outdir import OutdirTee, prepare_outdir
from shoal.controller.term.outputcap import GATHER_MAX_OUTPUT, OutputCap
from shoal.controller.term.progress import ProgressHandler, wants_progress
from shoal.controller.result import Result
from shoal.controller.term.summary import classify, folded, skipped

__all__ = [
    "LINE_CAP",
    "FailedOnlyHandler",
    "GatherHandler",
    "JsonHandler",
    "LineSplitter",
    "RawHandler",
    "StreamHandler",
    "choose_output",
    "failure_groups",
    "exit_record",
    "failure_shown",
    "report_failure",
]

# A "line" longer than this is printed in pieces rather than buffered further.
LINE_CAP = 64 * 1024
# Gathered lines are escaped and written this many at a time.
WRITE_LINES = 4096
# The rule above and below a gathered group's host set (dshbak's width).
RULE = "-" * 15
# Each line with its newline, and a last one without.
_LINES = re.compile(rb"[^\n]*\n|[^\n]+\Z")


class LineSplitter:
    """Cut each (host, stream)'s bytes into complete lines, holding back the partial one."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, str], bytes] = {}

    def feed(self, key: tuple[str, str], data: bytes) -> list[bytes]:
        """Return the complete lines (without their newline) that `data` finished."""
        lines = (self._partial.pop(key, b"") + data).split(b"\n")
        rest = lines.pop()
        while len(rest) > LINE_CAP:
            cut = utf8_cut(rest, LINE_CAP) or LINE_CAP  # a character stays whole
            lines.append(rest[:cut])
            rest = rest[cut:]
        if rest:
            self._partial[key] = rest
        return lines

    def flush(self, key: tuple[str, str]) -> bytes:
        """Return and forget what is left of a stream that has ended."""
        return self._partial.pop(key, b"")


class StreamHandler:
    """Prefix each line with its host, as it arrives; stderr lines go to stderr."""

    def __init__(self, display: Display, hosts: list[str]) -> None:
        self.display = display
        self.width = max((len(escape_text(h)) for h in hosts), default=0)
        self._lines = LineSplitter()
        self._prefix: dict[str, bytes] = {}

    def prefix(self, host: str) -> bytes:
        cached = self._prefix.get(host)
        if cached is None:
            shown = escape_text(host)
            label = self.display.paint(shown, Display.host_color(host)) + ":"
            pad = " " * (self.width - len(shown))
            cached = (label + pad + " ").encode()
            self._prefix[host] = cached
        return cached

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        lines = self._lines.feed((host, stream), data)
        if lines:
            self._write(host, stream, lines)

    def _write(self, host: str, stream: str, lines: list[bytes]) -> None:
        prefix = self.prefix(host)
        text = b"".join(prefix + escape_line(line) for line in lines)
        (self.display.out if stream == "stdout" else self.display.err)(text)

    def on_result(self, result: Result) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._lines.flush((result.host, stream))
            if rest:
                self._write(result.host, stream, [rest])
        report_failure(self.display, result)

    def close(self) -> None:
        pass


class RawHandler:
    """Byte-exact passthrough for a single host: no prefix, no decoding."""

    def __init__(self, display: Display) -> None:
        self.display = display

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        (self.display.out if stream == "stdout" else self.display.err)(data)

    def on_result(self, result: Result) -> None:
        report_failure(self.display, result)

    def close(self) -> None:
        pass


class GatherHandler:
    """Hold every host's lines in a MsgTree; print each distinct output once at the end.

    Memory grows with the distinct output, not with the host count: 500 hosts
    printing the same 100 lines cost 100 stored lines.
    """

    def __init__(self, display: Display, diff: bool = False) -> None:
        self.display = display
        self.diff = diff
        self.trees = {"stdout": MsgTree(), "stderr": MsgTree()}
        self.results: list[Result] = []
        self._lines = LineSplitter()

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        tree = self.trees[stream]
        for line in self._lines.feed((host, stream), data):
            tree.add(host, line)

    def on_result(self, result: Result) -> None:
        for stream, tree in self.trees.items():
            rest = self._lines.flush((result.host, stream))
            if rest:
                tree.add(result.host, rest)
        self.results.append(result)

    def close(self) -> None:
        show = self._print_diffs if self.diff else self._print_groups
        show(self.trees["stdout"], self.display.out, "")
        show(self.trees["stderr"], self.display.err, " (stderr)")
        shown = [r for r in self.results if failure_shown(self.display, r)]
        for hosts, reason in failure_groups(shown):
            self.display.error(f"{hosts}: {reason}")

    def _print_groups(self, tree: MsgTree, write: Callable[[bytes], None], label: str) -> None:
        for lines, hosts in tree.walk():
            header = self.display.paint(escape_text(f"{NodeSet(hosts)} ({len(hosts)}){label}"), "1;34")
            write(f"{RULE}\n{header}\n{RULE}\n".encode())
            for start in range(0, len(lines), WRITE_LINES):  # a copy of 16 MiB at once would double the peak
                write(b"".join(escape_line(line) for line in lines[start:start + WRITE_LINES]))

    def _print_diffs(self, tree: MsgTree, write: Callable[[bytes], None], label: str) -> None:
        """`--diff`: each distinct output as a unified diff against the most common one."""
        import difflib  # --diff only: not worth its import on every run

        groups = list(tree.walk())
        common_lines, common_hosts = max(groups, key=lambda group: len(group[1]), default=([], []))
        common = [_shown(line) for line in common_lines]
        for lines, hosts in groups:
            if hosts is common_hosts:
                continue
            diff = difflib.unified_diff(common, [_shown(line) for line in lines], lineterm="",
                                        fromfile=_set_name(common_hosts, label), tofile=_set_name(hosts, label))
            write("".join(line + "\n" for line in diff).encode("utf-8", "replace"))


def _shown(line: bytes) -> str:
    """A remote line as a diff shows it: decoded and escaped (controller/escape.py)."""
    return escape_text(line.decode("utf-8", "replace"))


def _set_name(hosts: list[str], label: str) -> str:
    """`web[01-05,07] (6)`, folded and cut like the summary's host sets."""
    return escape_text(f"{folded(hosts)} ({len(hosts)}){label}")


def failure_shown(display: Display, result: Result) -> bool:
    """A host that did not exit 0 gets its line; `-q` keeps only hosts that could not run."""
    return not result.ok and (display.verbosity >= 1 or not result.ran)


def report_failure(display: Display, result: Result) -> None:
    """`shoal: web03: failed (code 3)` on stderr, when `failure_shown` says so."""
    if failure_shown(display, result):
        display.error(f"{result.host}: {result.outcome_text}")


def failure_groups(results: list[Result]) -> list[tuple[NodeSet, str]]:
    """Group the hosts that did not exit 0 by outcome text, in order of their first host."""
    by_reason: dict[str, list[str]] = {}
    for result in results:
        if not result.ok:
            by_reason.setdefault(result.outcome_text, []).append(result.host)
    groups = [(min(hosts, key=natural_key), NodeSet(hosts), reason) for reason, hosts in by_reason.items()]
    groups.sort(key=lambda group: natural_key(group[0]))
    return [(hosts, reason) for _, hosts, reason in groups]


def exit_record(result: Result) -> dict[str, Any]:
    """The fields of a JSON `exit` event for one host's result."""
    return {
        "host": result.host, "status": result.status, "code": result.code, "signal": result.signal,
        "timed_out": result.timed_out, "cancelled": result.cancelled,
        "duration": round(result.duration, 6), "error": result.error, "error_code": result.error_code,
        "ok": result.ok, "unreachable": result.unreachable, "leftovers_ended": result.leftovers_ended,
        "outcome": result.outcome,
    }


def data_fields(data: bytes) -> list[dict[str, str]]:
    """`data` as `data` text where its lines are valid UTF-8, `data_b64` for the lines
    that are not, in order; neighbouring lines of one kind share a piece."""
    try:
        return [{"data": data.decode("utf-8")}]
    except UnicodeDecodeError:
        pass
    pieces: list[tuple[bool, list[bytes]]] = []
    for line in _LINES.findall(data):
        valid = _is_utf8(line)
        if pieces and pieces[-1][0] == valid:
            pieces[-1][1].append(line)
        else:
            pieces.append((valid, [line]))
    return [{"data": b"".join(lines).decode("utf-8")} if valid
            else {"data_b64": base64.b64encode(b"".join(lines)).decode("ascii")} for valid, lines in pieces]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def utf8_cut(data: bytes, cut: int) -> int:
    """Move `cut` back to the start of a UTF-8 sequence it would split, so the
    sequence reaches the next piece whole (it may continue in the next chunk)."""
    for back in range(1, min(4, cut) + 1):
        byte = data[cut - back]
        if byte & 0xC0 != 0x80:  # the lead byte (or ASCII) of the last sequence
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            return cut - back if need > back else cut
    return cut


def json_line(record: dict[str, Any]) -> bytes:
    """One JSON object and a newline; no character in it can drive a terminal."""
    return json_safe(json.dumps(record, ensure_ascii=False, separators=(",", ":"))).encode() + b"\n"


class JsonHandler:
    """One JSON object per line per event, for scripts and monitoring (schema above)."""

    def __init__(self, display: Display, clock: Callable[[], float] = time.monotonic) -> None:
        self.display = display
        self.clock = clock
        self.started = clock()
        self.results: list[Result] = []
        self._partial: dict[tuple[str, str], bytes] = {}

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        record = {"event": event, **fields, "t": round(self.clock() - self.started, 6)}
        self.display.out(json_line(record))

    def on_start(self, host: str) -> None:
        self.emit("start", {"host": host})

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        key = (host, stream)
        buf = self._partial.pop(key, b"") + data
        cut = buf.rfind(b"\n") + 1
        if cut == 0 and len(buf) >= LINE_CAP:
            cut = utf8_cut(buf, len(buf)) or len(buf)
        if cut < len(buf):
            self._partial[key] = buf[cut:]
        if cut:
            self._emit_output(host, stream, buf[:cut])

    def _emit_output(self, host: str, stream: str, data: bytes) -> None:
        for fields in data_fields(data):
            self.emit("output", {"host": host, "stream": stream, **fields})

    def on_result(self, result: Result) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((result.host, stream), b"")
            if rest:
                self._emit_output(result.host, stream, rest)
        if result.job is not None:  # run --detach: started, not ended
            self.emit("job", {"host": result.host, "job": result.job})
        else:
            self.emit("exit", exit_record(result))
        self.results.append(result)

    def close(self) -> None:
        ok, failed, unreachable = (sorted(hosts, key=natural_key) for hosts in classify(self.results))
        status = max((r.status for r in self.results), default=0)
        self.emit("summary", {"status": status, "ok": ok, "failed": failed, "unreachable": unreachable,
                              "skipped": sorted(skipped(self.results), key=natural_key)})


class FailedOnlyHandler:
    """Print nothing while running; afterwards list the hosts that did not exit 0."""

    def __init__(self, display: Display, as_json: bool = False) -> None:
        self.display = display
        self.as_json = as_json
        self.results: list[Result] = []

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        pass

    def on_result(self, result: Result) -> None:
        self.results.append(result)

    def close(self) -> None:
        failed = sorted((r for r in self.results if not r.ok), key=lambda r: natural_key(r.host))
        for result in failed:
            if self.as_json:
                record = {"event": "exit", **exit_record(result)}
                self.display.out(json_line(record))
            else:
                self.display.print(f"{result.host}: {result.outcome_text}")


def choose_output(display: Display, hosts: list[str], mode: str | None, *, raw: bool = False,
                  outdir: str | None = None, failed_only: bool = False,
                  max_output: int | None = None, diff: bool = False) -> OutputHandler:
    """Build the handler for a run, once.

    `mode` None means the default: raw passthrough for one host when stdout is not a
    terminal or `raw` is set, else stream (with prefixes, also when piped, so many
    hosts' lines stay attributable). `failed_only` replaces the mode's output with the
    failed-host listing (JSON records with mode "json"). `outdir` tees into files, and
    the progress line wraps it all when the run is big and stderr is a terminal.
    `diff` gathers and shows each distinct output as a diff against the most common.
    `max_output` caps each host's stream (controller/term/outputcap.py), inside the
    tee so the files stay whole: None is the mode's default (GATHER_MAX_OUTPUT for
    gather, which holds output; no cap for the others, which hold none), 0 no cap.
    """
    handler: OutputHandler
    if failed_only:
        handler = FailedOnlyHandler(display, as_json=mode == "json")
    elif mode == "gather" or diff:
        handler = GatherHandler(display, diff=diff)
    elif mode == "json":
        handler = JsonHandler(display)
    elif mode is None and len(hosts) == 1 and (raw or not display.stdout_tty):
        handler = RawHandler(display)
    else:
        handler = StreamHandler(display, hosts)
    limit = max_output if max_output is not None else GATHER_MAX_OUTPUT if isinstance(handler, GatherHandler) else 0
    if limit and not failed_only:
        handler = OutputCap(handler, limit)
    if outdir is not None:
        handler = OutdirTee(handler, prepare_outdir(outdir))
    if wants_progress(display, len(hosts)):
        handler = ProgressHandler(handler, display, len(hosts))
    return handler
