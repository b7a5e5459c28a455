"""Where `shoal batch --outdir` puts each command's files, and what `--failed-only` shows.

Layout: one directory per command of the file, numbered so `ls` lists them in
order and two identical commands never share one, then the host files that
`run --outdir` writes (controller/term/outdir.py, same %-escaping of host names)::

    DIR/01-apt-get-update/web01.out     DIR/01-apt-get-update/web01.err
    DIR/02-systemctl-restart-app/...    DIR/10-echo-done/...

The number is 1-based, zero-padded to the width of the command count (at least two
digits); the slug is the command text with every run of characters other than
letters, digits, `.` and `_` turned into one `-` (`test -z "$X"` -> `test-z-X`),
cut to SLUG_CAP characters, without `-` or `.` at either end (just the number when
nothing is left). All directories are made before the first
host connects, so a bad DIR fails the batch at once (exit 2) and an empty directory
means no host ran that command.

`--failed-only` keeps a host's output for a command back until the command ends,
then hands it to the chosen output mode only if the command failed there.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import IO, Any

from shoal.controller.batch import BatchLine
from shoal.controller.term.outdir import prepare_outdir
from shoal.controller.result import Result

__all__ = ["SLUG_CAP", "SPOOL_MEMORY", "FailedOutputFilter", "command_directories", "command_directory_name"]

# Longest command slug in a directory name: enough to recognise the command.
SLUG_CAP = 40
# Output one running host's command may hold in memory before it moves to a temp file;
# hosts run up to --fanout at once, so this bounds the filter's memory per host.
SPOOL_MEMORY = 256 * 1024

_NOT_SLUG = re.compile(r"[^A-Za-z0-9._]+")
# A held event: one tag byte for the stream, a 4-byte big-endian length, the data.
_TAGS = {"stdout": b"o", "stderr": b"e"}
_STREAMS = {tag: stream for stream, tag in _TAGS.items()}
_HEAD = 5


def command_directory_name(index: int, count: int, text: str) -> str:
    """The directory of command `index` (0-based) of `count`; see the module docstring."""
    number = str(index + 1).zfill(max(2, len(str(count))))
    slug = _NOT_SLUG.sub("-", text)[:SLUG_CAP].strip("-.")
    return f"{number}-{slug}" if slug else number


def command_directories(outdir: str, lines: list[BatchLine]) -> list[str]:
    """Create DIR and one directory per command; ConfigError (exit 2) if we cannot."""
    prepare_outdir(outdir)
    return [prepare_outdir(os.path.join(outdir, command_directory_name(i, len(lines), line.text)))
            for i, line in enumerate(lines)]


class FailedOutputFilter:
    """Hold each host's events until its result; pass them on only when it failed.

    A failure is anything not `ok`: non-zero exit, signal, timeout, unreachable or
    lost. Held output goes to a spooled temp file that stays in memory up to
    SPOOL_MEMORY bytes, so a chatty command on many hosts cannot exhaust memory.
    The inner handler sees the host's events in their original order, all at once
    when the command ends. `shown` counts the hosts passed on.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.shown = 0
        self._held: dict[str, IO[bytes]] = {}

    def on_start(self, host: str) -> None:
        self._held[host] = tempfile.SpooledTemporaryFile(SPOOL_MEMORY)  # noqa: SIM115 - closed in on_result

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        spool = self._held.get(host)
        if spool is not None:
            spool.write(_TAGS[stream] + len(data).to_bytes(_HEAD - 1, "big"))
            spool.write(data)

    def on_result(self, result: Result) -> None:
        spool = self._held.pop(result.host, None)
        try:
            if not result.ok:
                if spool is not None:
                    self._replay(result.host, spool)
                self.inner.on_result(result)
                self.shown += 1
        finally:
            if spool is not None:
                spool.close()

    def _replay(self, host: str, spool: IO[bytes]) -> None:
        self.inner.on_start(host)
        spool.seek(0)
        while head := spool.read(_HEAD):
            data = spool.read(int.from_bytes(head[1:], "big"))
            self.inner.on_output(host, _STREAMS[head[:1]], data)

    def close(self) -> None:
        for spool in self._held.values():
            spool.close()
        self._held.clear()
        self.inner.close()
