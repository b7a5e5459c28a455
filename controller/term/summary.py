"""The one-line end-of-run summary, with host sets folded like clush does.

    shoal: 497 ok, 1 failed (web03), 2 unreachable (db[1-2]) in 1.42s
    shoal: 20 ok, 1 failed (web21), 0 unreachable, 79 skipped (web[22-100]) in 9.80s
    shoal: 8 ok, 0 failed, 1 signal (web09), 1 timed_out (web10), 0 unreachable, 1 lost (db3) in 12.01s

Hosts are counted by outcome, in the one vocabulary (shoal.controller.outcome):
`ok`, `failed` and `unreachable` always, every other outcome when a host had it.

At 500 hosts a folded set can still be long when failures are scattered, so each set
is cut to about HOSTS_WIDTH characters (`web[001,007,...] +212 more`): the line stays
one line, and `--failed-only` lists every host with its reason.
"""

from __future__ import annotations

from shoal.controller.nodeset import NodeSet, natural_key
from shoal.controller.outcome import HOST_OUTCOMES, Outcome
from shoal.controller.result import Result

__all__ = ["HOSTS_WIDTH", "ALWAYS_COUNTED", "summary_line", "classify", "folded", "skipped"]

HOSTS_WIDTH = 120
# Counted in every summary line, even at 0: the three a reader looks for.
ALWAYS_COUNTED = (Outcome.OK, Outcome.FAILED, Outcome.UNREACHABLE)


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
    """`shoal: N ok, N failed (hosts), ..., N unreachable (hosts)[ in 1.23s]`, by outcome."""
    by_outcome: dict[Outcome, list[str]] = {}
    for r in results:
        by_outcome.setdefault(r.outcome, []).append(r.host)
    parts = []
    for outcome in HOST_OUTCOMES:
        hosts = by_outcome.get(outcome, [])
        if outcome is Outcome.OK or not hosts and outcome in ALWAYS_COUNTED:
            parts.append(f"{len(hosts)} {outcome}")
        elif hosts:
            parts.append(f"{len(hosts)} {outcome} ({folded(hosts)})")
    timing = f" in {elapsed:.2f}s" if elapsed is not None else ""
    return "shoal: " + ", ".join(parts) + timing
