"""The environment and working directory a command starts with, like an ssh login's.

A command inherits the agent's environment, less what belongs to the agent
alone: systemd's hand-over variables. With `NOTIFY_SOCKET` a command could tell
systemd the agent is ready or stopping, with `LISTEN_FDS`/`LISTEN_PID` a daemon
it starts might take fds that are not its own, with `WATCHDOG_*` it might pet
(or starve) the agent's watchdog. ssh starts commands in the user's home
directory, and so do we when the request names none: the agent's own working
directory (often `/` under systemd, anything by hand) is an accident of how it
was started. Like sshd, `SHELL` is always the user's shell from the user
database (the agent's own may be unset under systemd, or another user's in a
sudo), and `HOME`, `USER` and `LOGNAME` are filled from it when missing.

The agent's own environment does not change while it runs, so its filtered copy
is made once per agent (`inherited_env`); the user database is still read for
every command, as sshd does for every login.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping

__all__ = ["AGENT_PRIVATE_ENV", "inherited_env", "login_entry", "base_env", "default_cwd"]

# Variables systemd (or another service manager) hands to the agent process only.
AGENT_PRIVATE_ENV = re.compile(
    r"NOTIFY_SOCKET|LISTEN_FDS|LISTEN_PID|LISTEN_FDNAMES|WATCHDOG_.*|INVOCATION_ID|JOURNAL_STREAM|"
    r"MANAGERPID|SYSTEMD_EXEC_PID|TRIGGER_.*|MONITOR_.*|CREDENTIALS_DIRECTORY")


def inherited_env(agent_env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without its private variables: what every command inherits."""
    return {k: v for k, v in agent_env.items() if not AGENT_PRIVATE_ENV.fullmatch(k)}


def login_entry() -> pwd.struct_passwd | None:
    """Our user's entry in the user database, or None: read once per command, for both helpers below."""
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        return None


def base_env(inherited: Mapping[str, str], entry: pwd.struct_passwd | None) -> dict[str, str]:
    """A fresh copy of `inherited` (see inherited_env) with its user's login variables."""
    env = dict(inherited)
    if entry is None:
        return env
    env["SHELL"] = entry.pw_shell or "/bin/sh"
    for name, value in (("HOME", entry.pw_dir), ("USER", entry.pw_name), ("LOGNAME", entry.pw_name)):
        if value:
            env.setdefault(name, value)
    return env


def default_cwd(entry: pwd.struct_passwd | None) -> str:
    """The home directory of the user commands run as (ours), or `/` when it is missing."""
    home = entry.pw_dir if entry is not None else None
    return home if home and os.path.isdir(home) else "/"
