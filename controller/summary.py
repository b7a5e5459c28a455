"""The one-line end-of-run summary, with host sets folded like clush does."""

from __future__ import annotations

from .nodeset import NodeSet
from .result import Result

__all__ = ["summary_line", "classify"]


def classify(results: list[Result]) -> tuple[list[str], list[str], list[str]]:
    """Split hosts into ok, failed (ran, non-zero) and unreachable (never ran or lost)."""
    ok, failed, unreachable = [], [], []
    for r in results:
        (ok if r.ok else unreachable if r.unreachable else failed).append(r.host)
    return ok, failed, unreachable


def summary_line(results: list[Result]) -> str:
    ok, failed, unreachable = classify(results)
    parts = [f"{len(ok)} ok"]
    for label, hosts in (("failed", failed), ("unreachable", unreachable)):
        if hosts:
            parts.append(f"{len(hosts)} {label} ({NodeSet(hosts)})")
        else:
            parts.append(f"0 {label}")
    return "shoal: " + ", ".join(parts)
