"""The type every output handler has: the library's events plus `close`.

The library (`shoal.controller.fleet.Handler`) only sends events; a terminal handler
also has to flush what it gathered when the run ends. Wrappers (progress line, output
directory tee) hold an inner handler of this same type, so the chain is typed end to end.
"""

from __future__ import annotations

from typing import Protocol

from shoal.controller.fleet import Handler

__all__ = ["OutputHandler"]


class OutputHandler(Handler, Protocol):
    """A run's events in, text out; `close` prints what is left (gathered output, totals)."""

    def close(self) -> None: ...
