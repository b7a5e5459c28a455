"""Logging helpers: a per-connection adapter that stamps peer and request."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, MutableMapping

from shoal.agent.clip import ClipFilter

__all__ = ["ConnLog", "setup_logging"]

# The agent's records carry peer data (argv, paths, messages): cap each argument.
for _name in ("shoal.agent", "shoal.audit"):
    logging.getLogger(_name).addFilter(ClipFilter())


class ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix every line with `[peer=… key=… req=…]` so one connection's story greps."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        req = kwargs.pop("req", None)
        parts = [f"peer={extra.get('peer')}"]
        if extra.get("key"):
            parts.append(f"key={extra['key']}")
        if req is not None:
            parts.append(f"req={req}")
        return f"[{' '.join(parts)}] {msg}", kwargs


def setup_logging(level: str) -> None:
    """Log to stderr; no timestamps under systemd (journald adds its own)."""
    under_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(ClipFilter())  # every shoal logger's records, children included
    root = logging.getLogger("shoal")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
