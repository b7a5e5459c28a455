"""The `shoal` command's process: main() with the garbage collector kept off start-up.

What a run imports (the modules, their classes and functions, all tied in reference
cycles) lives until the process exits. Left to the collector, it is walked again by
collections while the imports run and afterwards, and at exit the interpreter's last
collection tears every module's cycles down one object at a time: together about a
tenth of a whole `shoal run` (tests/bench/bench_core.py). So the imports run with
the collector off, and what they made is frozen (`gc.freeze`): later collections,
which still free the run's own garbage, skip it, and at exit the system reclaims it
with the process. Only the installed command does this; `main()` called in-process
leaves its caller's collector alone. Before any of it, the plain one-host run
through a hub is tried (controller/cli/hubrun.py), which needs none of those imports.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time: the one-host hub run needs none of it
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["entry"]


def entry() -> NoReturn:
    """Run `shoal` with sys.argv and exit with its status."""
    from shoal.controller.cli.hubrun import run_through_hub

    through_hub = run_through_hub(sys.argv[1:])  # the plain one-host hub run imports next to nothing
    if through_hub is not None:
        _exit_now(through_hub)
    gc.disable()
    try:
        from shoal.controller.cli.main import main
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(main())


def _exit_now(status: int) -> NoReturn:
    """Exit once what was written is out, skipping the interpreter's teardown: after the
    hub run nothing is left to close, and tearing the imported modules down one by one
    would cost that run a tenth of its time."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        from shoal.controller.cli.main import EXIT_BROKEN_PIPE

        status = EXIT_BROKEN_PIPE  # as the full program ends when its reader went away
    except (OSError, ValueError):
        pass  # a closed or failing stream: what there was to say has been tried
    os._exit(status if 0 <= status <= 255 else 255)


if __name__ == "__main__":
    entry()
