"""Reconnection delays: exponential backoff with full jitter, one schedule for both ends.

A dial-in agent reconnecting to its hub and a hub re-dialling the agents it keeps
warm both wait this way. Attempt n (0 after a success) waits a uniformly random time
in [0, min(cap, first * 2**n)]: spread out, so a restarted hub is not met by every
agent in the same second, and never longer than `cap`, so an agent is back within
`cap` seconds (plus a handshake) of its hub being reachable again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """The delays before successive attempts; `reset()` after a success.

    Args:
        first: the widest first wait, in seconds.
        cap: the widest wait ever.
        rng: a function giving a float in [0, 1) (tests pass a fixed one).
    """

    def __init__(self, first: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.first = first
        self.cap = max(cap, first)
        self.failures = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The widest the next wait can be."""
        return min(self.cap, self.first * (1 << min(self.failures, 64)))

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        delay = self.ceiling() * float(self._rng())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
