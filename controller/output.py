"""Output handlers for fleet runs: chosen once, fed events, own all formatting.

`StreamHandler` prints lines as they arrive with aligned `host: ` prefixes;
`RawHandler` passes one host's bytes through untouched (`shoal run h -- tar c
/etc > etc.tar` must give a valid tarball). Lines are split only for display,
with a cap so one endless line cannot grow memory without bound.
"""

from __future__ import annotations

from .display import Display
from .result import Result

__all__ = ["StreamHandler", "RawHandler", "LINE_CAP", "decode_for_display"]

# A "line" longer than this is printed in pieces rather than buffered further.
LINE_CAP = 64 * 1024


def decode_for_display(data: bytes) -> str:
    """Text for a human: UTF-8 with invalid bytes replaced, never an exception."""
    return data.decode("utf-8", "replace")


class StreamHandler:
    """Prefix each line with its host, as it arrives; stderr lines go to stderr."""

    def __init__(self, display: Display, hosts: list[str]) -> None:
        self.display = display
        self.width = max((len(h) for h in hosts), default=0)
        self._partial: dict[tuple[str, str], bytes] = {}
        self._prefix: dict[str, bytes] = {}

    def prefix(self, host: str) -> bytes:
        cached = self._prefix.get(host)
        if cached is None:
            label = self.display.paint(host, Display.host_color(host)) + ":"
            pad = " " * (self.width - len(host))
            cached = (label + pad + " ").encode()
            self._prefix[host] = cached
        return cached

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        key = (host, stream)
        buf = self._partial.pop(key, b"") + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        while len(rest) > LINE_CAP:
            lines.append(rest[:LINE_CAP])
            rest = rest[LINE_CAP:]
        if rest:
            self._partial[key] = rest
        if lines:
            self._write(host, stream, lines)

    def _write(self, host: str, stream: str, lines: list[bytes]) -> None:
        prefix = self.prefix(host)
        text = b"".join(prefix + decode_for_display(line).encode() + b"\n" for line in lines)
        (self.display.out if stream == "stdout" else self.display.err)(text)

    def on_result(self, result: Result) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((result.host, stream), None)
            if rest:
                self._write(result.host, stream, [rest])
        if result.error:
            self.display.error(f"{result.host}: {result.error}")

    def close(self) -> None:
        pass


class RawHandler:
    """Byte-exact passthrough for a single host: no prefix, no decoding."""

    def __init__(self, display: Display) -> None:
        self.display = display

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        if stream == "stdout":
            self.display.stdout.write(data)
            self.display.stdout.flush()
        else:
            self.display.stderr.write(data)
            self.display.stderr.flush()

    def on_result(self, result: Result) -> None:
        if result.error:
            self.display.error(f"{result.host}: {result.error}")

    def close(self) -> None:
        pass
