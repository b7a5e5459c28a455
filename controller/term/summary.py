"""The one-line end-of-run summary, with host sets folded like clush does.

    shoal: 497 ok, 1 failed (web03), 2 unreachable (db[1-2]) in 1.42s
    shoal: 20 ok, 1 failed (web21), 0 unreachable, 79 skipped (web[22-100]) in 9.80s

At 500 hosts a folded set can still be long when failures are scattered, so each set
is cut to about HOSTS_WIDTH characters (`web[001,007,...] +212 more`): the line stays
one line, and `--failed-only` lists every host with its reason.
"""

from __future__ import annotations

from shoal.controller.nodeset import NodeSet, natural_key
from shoal.controller.outcome import Outcome
from shoal.controller.result import Result

__all__ = ["HOSTS_WIDTH", "summary_line", "classify", "folded", "skipped"]

HOSTS_WIDTH = 120


def classify(results: list[Result]) -> tuple[list[str], list[str], list[str]]:
    """Split hosts into ok, failed (ran, non-zero) and unreachable (never ran or lost)."""
    ok: list[str] = []
    failed: list[str] = []
    unreachable: list[str] = []
    for r in results:
        if r.error_code == Outcome.SKIPPED:  # listed apart: see `skipped`
            continue
        (ok if r.ok else unreachable if r.unreachable else failed).append(r.host)
    return ok, failed, unreachable


def skipped(results: list[Result]) -> list[str]:
    """Hosts a stopped run (--max-fail, --canary) never started."""
    return [r.host for r in results if r.error_code == Outcome.SKIPPED]


def folded(hosts: list[str], width: int = HOSTS_WIDTH) -> str:
    """Fold `hosts`; when that is wider than `width`, fold the first ones and count the rest."""
    text = str(NodeSet(hosts))
    if len(text) <= width:
        return text
    ordered = sorted(hosts, key=natural_key)
    low, high = 1, len(ordered) - 1  # find the most leading hosts whose fold fits
    while low < high:
        mid = (low + high + 1) // 2
        if len(str(NodeSet(ordered[:mid]))) <= width:
            low = mid
        else:
            high = mid - 1
    return f"{NodeSet(ordered[:low])} +{len(ordered) - low} more"


def summary_line(results: list[Result], elapsed: float | None = None) -> str:
    """`shoal: N ok, N failed (hosts), N unreachable (hosts)[ in 1.23s]`."""
    ok, failed, unreachable = classify(results)
    parts = [f"{len(ok)} ok"]
    for label, hosts in (("failed", failed), ("unreachable", unreachable)):
        parts.append(f"{len(hosts)} {label} ({folded(hosts)})" if hosts else f"0 {label}")
    if skipped(results):
        parts.append(f"{len(skipped(results))} skipped ({folded(skipped(results))})")
    timing = f" in {elapsed:.2f}s" if elapsed is not None else ""
    return "shoal: " + ", ".join(parts) + timing
