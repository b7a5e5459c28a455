"""Raise the soft open-files limit so a wide fan-out does not fail with EMFILE.

Each running host costs the controller a socket, plus two files with --outdir;
the common soft limit of 1024 is reached near 500 hosts. The hard limit is the
administrator's ceiling and is never exceeded.
"""

from __future__ import annotations

import resource

__all__ = ["FDS_PER_HOST", "FDS_SPARE", "raise_open_files_limit"]

FDS_PER_HOST = 3     # the connection, and the .out/.err files of --outdir
FDS_SPARE = 256      # stdio, the stdin spool, the event loop, imports, DNS


def raise_open_files_limit(hosts_at_once: int) -> int:
    """Make room for `hosts_at_once` running hosts if the hard limit allows; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hosts_at_once * FDS_PER_HOST + FDS_SPARE
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft
