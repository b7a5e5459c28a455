"""`--outdir DIR`: also keep each host's stdout and stderr in DIR/HOST.out and DIR/HOST.err.

Like pssh -o/-e, this tees whichever output mode was chosen. Files are created when a
host connects (so an empty file means "ran, printed nothing"; a host that never
connected gets none), written as output arrives and closed when the host finishes,
so at most two files per running host are open.

Host names become file names through `host_file_stem`: letters, digits, `.`, `_`, `-`
and `:` stay as they are, every other byte is %XX-encoded (`[::1]:8470` ->
`%5B::1%5D:8470`, `unix:/run/a.sock` -> `unix:%2Frun%2Fa.sock`). The mapping is
reversible (urllib.parse.unquote) and so never merges two hosts into one file, and a
name can never climb out of DIR.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from typing import IO

from shoal.controller.term.handler import OutputHandler

from shoal.protocol.errors import ConfigError

from shoal.controller.result import Result

__all__ = ["OutdirTee", "host_file_stem", "prepare_outdir"]

_KEEP = re.compile(rb"[A-Za-z0-9._:-]")
# Leaves room for the suffix under the usual 255-byte NAME_MAX.
_MAX_STEM = 200


def host_file_stem(host: str) -> str:
    """The file name (without suffix) for a host's output; see the module docstring."""
    raw = host.encode("utf-8", "surrogateescape")
    stem = "".join(chr(b) if _KEEP.fullmatch(bytes([b])) else f"%{b:02X}" for b in raw)
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > _MAX_STEM:  # keep it unique but short enough for the file system
        stem = stem[:_MAX_STEM - 17] + "~" + hashlib.sha256(raw).hexdigest()[:16]
    return stem


def prepare_outdir(path: str) -> str:
    """Create the directory if needed; a ConfigError (exit 2) names it if we cannot."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {path}: {exc.strerror}", "--outdir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {path} is not writable", "--outdir")
    return path


class OutdirTee:
    """Write each host's output to files, then pass every event to the inner handler."""

    def __init__(self, inner: OutputHandler, directory: str) -> None:
        self.inner = inner
        self.directory = directory
        self._files: dict[tuple[str, str], IO[bytes]] = {}

    def on_start(self, host: str) -> None:
        stem = os.path.join(self.directory, host_file_stem(host))
        for stream, suffix in (("stdout", ".out"), ("stderr", ".err")):
            with self._writing(stem + suffix):
                self._files[(host, stream)] = open(stem + suffix, "wb")  # noqa: SIM115 - closed in on_result
        self.inner.on_start(host)

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        file = self._files.get((host, stream))
        if file is not None:
            with self._writing(file.name):
                file.write(data)
        self.inner.on_output(host, stream, data)

    def on_result(self, result: Result) -> None:
        self._close_host(result.host)
        self.inner.on_result(result)

    def _close_host(self, host: str) -> None:
        for stream in ("stdout", "stderr"):
            file = self._files.get((host, stream))
            if file is not None:
                with self._writing(file.name):
                    file.close()
                self._files.pop((host, stream), None)

    def close(self) -> None:
        for host, _ in list(self._files):
            self._close_host(host)
        self.inner.close()

    @contextlib.contextmanager
    def _writing(self, path: str | int) -> Iterator[None]:
        """A file we cannot write (disk full) ends the run naming it: our failure, not the host's."""
        try:
            yield
        except OSError as exc:
            files, self._files = list(self._files.values()), {}
            for file in files:
                with contextlib.suppress(OSError):
                    file.close()
            raise ConfigError(f"cannot write {path}: {exc.strerror}", "--outdir") from None
