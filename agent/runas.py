"""Who a command runs as (issue 17): the user database, the key's policy, the child's ids.

An EXEC naming `user` runs as that user when the agent is root: the child gets
the user's supplementary groups, gid and uid (set by subprocess in the child,
in that order, before exec), and `HOME`, `USER`, `LOGNAME`, `SHELL` and a
default `PATH` from the user database, as a login by ssh would. An agent not
running as root can only run commands as itself.

Policy: a key with `allow = "all"` may become anyone unless its `users` list
says otherwise; a listed key may become only the users it names. Any key may
name the agent's own user, which changes nothing.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RunAs", "DEFAULT_PATH", "ROOT_PATH", "lookup", "agent_user", "refusal", "user_env", "home_cwd"]

# PATH a command gets when it runs as another user, as login(1) sets it.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class RunAs:
    """A user from the user database: what the child's credentials and login variables come from."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


class UnknownUser(LookupError):
    """The user database has no such user."""


def lookup(name: str) -> RunAs:
    """The user `name` with its supplementary groups; UnknownUser when there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(name) from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "", entry.pw_shell or "/bin/sh")


def agent_user() -> str | None:
    """The name of the user the agent runs as, or None when the database has none."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def refusal(name: str, key_users: Sequence[str] | None, allow_all: bool) -> str | None:
    """Why a key may not run commands or transfer files as `name` (None: it may).

    Args:
        name: the user the request names.
        key_users: the key's `users` list, or None when its policy has none.
        allow_all: whether the key is `allow = "all"` (no list: anyone).
    """
    if name == agent_user():
        return None
    if key_users is None and allow_all or key_users is not None and name in key_users:
        if os.getuid() != 0:
            return f"the agent does not run as root and cannot act as {name!r}"
        return None
    return f"may not act as user {name!r}"


def user_env(user: RunAs) -> dict[str, str]:
    """The login variables for `user`."""
    return {"HOME": user.home or "/", "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell,
            "PATH": ROOT_PATH if user.uid == 0 else DEFAULT_PATH}


def home_cwd(user: RunAs) -> tuple[str, str | None]:
    """Where a command of `user` starts: its home, else `/` and a warning line (as ssh prints)."""
    if user.home and os.path.isdir(user.home):
        return user.home, None
    return "/", f"Could not chdir to home directory {user.home or '(none)'}: no such directory; starting in /\n"
