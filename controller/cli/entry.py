"""The `shoal` command's process: main() with the garbage collector kept off start-up.

What a run imports (the modules, their classes and functions, all tied in reference
cycles) lives until the process exits. Left to the collector, it is walked again by
collections while the imports run and afterwards, and at exit the interpreter's last
collection tears every module's cycles down one object at a time: together about a
tenth of a whole `shoal run` (tests/bench/bench_core.py). So the imports run with
the collector off, and what they made is frozen (`gc.freeze`): later collections,
which still free the run's own garbage, skip it, and at exit the system reclaims it
with the process. Only the installed command does this; `main()` called in-process
leaves its caller's collector alone.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

__all__ = ["entry"]


def entry() -> NoReturn:
    """Run `shoal` with sys.argv and exit with its status."""
    gc.disable()
    try:
        from shoal.controller.cli.main import main
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(main())
