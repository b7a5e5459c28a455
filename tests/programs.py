"""How tests start shoal's two programs: one way, whatever the install.

`python -m` under the interpreter running the tests reaches exactly the code the
tests import: in a virtualenv or not, editable or not. A console script is not
always beside `sys.executable` (pip without a virtualenv puts it in its scheme's
scripts directory, /usr/local/bin or ~/.local/bin), nor on PATH, so only the few
tests whose subject is the installed entry point itself look for it, with
`installed`.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

__all__ = ["SHOAL", "SHOAL_AGENT", "installed"]

SHOAL = [sys.executable, "-m", "shoal.controller.cli.main"]
SHOAL_AGENT = [sys.executable, "-m", "shoal.agent.cli"]


def installed(name: str) -> str:
    """The console script `name` as pip installed it for this interpreter."""
    places = [sysconfig.get_path("scripts"), sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")),
              str(Path(sys.executable).parent)]
    for place in places:
        if (Path(place) / name).is_file():
            return str(Path(place) / name)
    raise AssertionError(f"no installed {name!r} in {', '.join(dict.fromkeys(places))}: is shoal pip-installed?")
