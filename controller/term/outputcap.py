"""`--max-output SIZE`: keep the head and the tail of each host's stream, drop the middle.

Gather mode holds every host's output until the run ends, so without a cap 3 hosts
printing 100 MB each cost a gigabyte. `OutputCap` sits between the fleet and the mode's
handler: the first HEAD of a host's stream passes through as it arrives (gather's
MsgTree shares it between hosts that print the same), the last TAIL is held in a ring
per running host, and when the host ends the inner handler gets a marked gap line and
then the tail::

    [... 97.3 MiB not shown ...]

The tail is the smaller share (TAIL_SHARE), because it is the part held per running
host: with the 16 MiB gather default and 64 hosts running, the rings hold at most
64 x 1 MiB per stream. The tail starts at a whole line; the partial line cut by the
ring is counted in the gap. `--outdir` sits outside the cap and still gets every byte.
"""

from __future__ import annotations

from collections import deque

from shoal.controller.result import Result
from shoal.controller.term.handler import OutputHandler
from shoal.controller.term.transferprogress import format_bytes

__all__ = ["GATHER_MAX_OUTPUT", "TAIL_SHARE", "OutputCap", "gap_line"]

# What gather keeps per host and stream unless told otherwise (--max-output).
GATHER_MAX_OUTPUT = 16 * 1024 * 1024
# The tail gets 1/TAIL_SHARE of the cap: it is held per running host, the head is not.
TAIL_SHARE = 16


def gap_line(dropped: int) -> bytes:
    """The line that stands for the bytes left out."""
    return f"[... {format_bytes(dropped)} not shown ...]\n".encode()


class _Stream:
    """One host's stream under the cap: the head passed so far, the held tail, the gap."""

    __slots__ = ("head_open", "passed", "pending", "tail", "held", "dropped", "head_ends_line")

    def __init__(self) -> None:
        self.head_open = True
        self.passed = 0
        self.pending = b""  # the head's partial last line, passed once it is whole
        self.tail: deque[bytes] = deque()
        self.held = 0
        self.dropped = 0
        self.head_ends_line = True


class OutputCap:
    """Pass the head through, hold the tail, replace the middle with `gap_line`.

    Args:
        inner: the mode's handler.
        limit: bytes kept per host and stream (head plus tail); must be positive.
    """

    def __init__(self, inner: OutputHandler, limit: int) -> None:
        self.inner = inner
        self.tail_limit = max(1, limit // TAIL_SHARE)
        self.head_limit = limit - self.tail_limit
        self._streams: dict[tuple[str, str], _Stream] = {}

    def on_start(self, host: str) -> None:
        self.inner.on_start(host)

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        state = self._streams.setdefault((host, stream), _Stream())
        if state.head_open:
            data = self._pass_head(host, stream, state, data)
        if data:
            self._hold(state, data)

    def _pass_head(self, host: str, stream: str, state: _Stream, data: bytes) -> bytes:
        """Pass whole lines while the head has room; return the bytes past it.

        Where the head ends depends on the bytes alone, not on how they were chunked,
        so hosts that printed the same still gather into one group.
        """
        buf = state.pending + data
        room = self.head_limit - state.passed
        if len(buf) <= room:
            cut = buf.rfind(b"\n") + 1
            state.pending, rest = buf[cut:], b""
        else:  # the head is full: end it at its last whole line (or mid-line, for one endless line)
            cut = buf.rfind(b"\n", 0, room) + 1 or (0 if state.passed else room)
            state.pending, rest = b"", buf[cut:]
            state.head_open = False
        if cut:
            state.passed += cut
            state.head_ends_line = buf[cut - 1:cut] == b"\n"
            self.inner.on_output(host, stream, buf[:cut])
        return rest

    def _hold(self, state: _Stream, data: bytes) -> None:
        state.tail.append(data)
        state.held += len(data)
        while state.held > self.tail_limit:
            over = state.held - self.tail_limit
            first = state.tail[0]
            if len(first) <= over:
                state.tail.popleft()
                cut = len(first)
            else:
                state.tail[0] = first[over:]
                cut = over
            state.held -= cut
            state.dropped += cut

    def on_result(self, result: Result) -> None:
        for stream in ("stdout", "stderr"):
            state = self._streams.pop((result.host, stream), None)
            if state is not None and state.pending:
                self.inner.on_output(result.host, stream, state.pending)
            if state is not None and state.tail:
                self.inner.on_output(result.host, stream, self._rest(state))
        self.inner.on_result(result)

    @staticmethod
    def _rest(state: _Stream) -> bytes:
        """The held tail, after the gap line when something was dropped."""
        tail = b"".join(state.tail)
        if not state.dropped:
            return tail
        newline = tail.find(b"\n")
        if newline >= 0 and newline + 1 < len(tail):  # start the tail at a whole line
            state.dropped += newline + 1
            tail = tail[newline + 1:]
        return (b"" if state.head_ends_line else b"\n") + gap_line(state.dropped) + tail

    def close(self) -> None:
        self.inner.close()
