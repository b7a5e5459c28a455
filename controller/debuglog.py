"""Where the CLI's internal reports go: a file named by SHOAL_DEBUG_LOG, or nowhere.

The user's stderr carries only Display's one-line messages. Without this, asyncio's
"Exception in callback …" and "Task exception was never retrieved", and any
WARNING from our loggers, would reach it through logging's last-resort handler,
traceback and all. They are bugs worth a report, so they are kept for whoever sets
SHOAL_DEBUG_LOG=FILE, at DEBUG level, with tracebacks.
"""

from __future__ import annotations

import logging
import os

__all__ = ["DEBUG_LOG_ENV", "setup_debug_log"]

DEBUG_LOG_ENV = "SHOAL_DEBUG_LOG"
# asyncio's loop reports, and ours. Not "shoal" as a whole: in tests, agents share
# this process and their loggers must stay as the agent configured them.
_LOGGERS = ("asyncio", "shoal.controller")
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def setup_debug_log() -> str | None:
    """Route asyncio's and the controller's loggers to the debug log; return its path, if any.

    Any handler at all stops logging's last-resort print to stderr, so without
    SHOAL_DEBUG_LOG a NullHandler is enough. Safe to call again (tests run `main()`
    many times): our previous handlers are replaced, never stacked. A path that
    cannot be opened is treated as unset.
    """
    while _installed:
        logger, old = _installed.pop()
        logger.removeHandler(old)
        old.close()
    path = os.environ.get(DEBUG_LOG_ENV) or None
    for name in _LOGGERS:
        handler: logging.Handler = logging.NullHandler()
        logger = logging.getLogger(name)
        if path is not None:
            try:
                handler = logging.FileHandler(path, encoding="utf-8")
            except OSError:
                path = None
            handler.setFormatter(logging.Formatter(_FORMAT))
        logger.setLevel(logging.DEBUG if path is not None else logging.NOTSET)
        logger.addHandler(handler)
        _installed.append((logger, handler))
    return path
