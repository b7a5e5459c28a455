"""Threads that move bulk data (transfer reads, writes and hashes) yield the CPU to the loop.

A transfer's threads hash and copy as fast as the CPU allows, so on a small
machine they keep every core busy. The event loop's work is small but waited
for: keepalives, pings, other sessions' commands and their output. Starting bulk
threads a few nice levels below the loop lets the scheduler run the loop as soon
as it wakes, while the transfer still gets all the CPU the loop leaves.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

__all__ = ["start_bulk_thread", "BULK_NICE"]

# Linux nice levels added to a bulk thread (each level is ~1.25x less CPU share
# when the loop competes for a core). Raising one's own nice value needs no privilege.
BULK_NICE = 5


def start_bulk_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread running `target(*args)` at BULK_NICE below the process."""

    def run() -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BULK_NICE)
        except OSError:
            pass  # not Linux-like, or already at the lowest priority: run as is
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
