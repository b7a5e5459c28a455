"""How a rolling run (`--serial`, `--canary`) shows which wave it is on.

The library calls `on_wave(number, count, hosts)` as each wave starts; a run in one
wave (no --serial or --canary) shows nothing of it. Otherwise the progress
line then reads `wave 3/10, ...`; JSON output gets one event per wave,

    {"event": "wave", "wave": N, "waves": COUNT, "hosts": [H...], "t": T}

and with -v a `shoal: wave N/COUNT: HOSTS` line goes to stderr. The handlers that
show these are found down the chain of wrappers (progress, --outdir tee), each of
which holds the next as `inner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.controller.nodeset import NodeSet
from shoal.controller.term.display import Display
from shoal.controller.term.output import JsonHandler
from shoal.controller.term.progress import ProgressHandler

__all__ = ["wave_reporter"]


def _chain(handler: Any) -> list[Any]:
    chain = []
    while handler is not None:
        chain.append(handler)
        handler = getattr(handler, "inner", None)
    return chain


def wave_reporter(display: Display, handler: Any) -> Callable[[int, int, list[str]], None]:
    """The `on_wave` callback for a run whose events go to `handler`."""
    chain = _chain(handler)
    progress = [h for h in chain if isinstance(h, ProgressHandler)]
    json = [h for h in chain if isinstance(h, JsonHandler)]

    def on_wave(number: int, count: int, hosts: list[str]) -> None:
        if count == 1:  # not a rolling run: nothing to tell
            return
        for p in progress:
            p.wave = f"wave {number}/{count}, "
        for j in json:
            j.emit("wave", {"wave": number, "waves": count, "hosts": hosts})
        display.debug(f"wave {number}/{count}: {NodeSet(hosts)}")

    return on_wave
