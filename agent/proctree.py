"""Find, signal and reap every process a request started, wherever it ran off to.

A command is more than its pid. It forks helpers, backgrounds jobs, and daemons
call setsid() and double-fork so that neither the parent chain nor the process
group leads to them any more. Killing only the pid or only the group leaves such
processes running after the request has ended, so we recognise a request's
processes three ways, each catching what the others miss:

* the root pid and its descendants (parent links);
* the process group the root leads (children start with `start_new_session`);
* a marker in the environment, `SHOAL_REQUEST=<token>`, which every descendant
  inherits unless it deliberately scrubs its environment.

Pids are reused, and the root is usually reaped by its `Popen` before a slow
kill has finished, so the root pid is trusted only while it still names our own
process: it carries the token, or it carries no marker at all and is still our
child (it may have exec'd through `env -i`). A pid that now names some other
process is not ours, and neither are its children nor the group it leads; the
marker search still finds the request's escaped processes.

With the agent made a child subreaper, orphans of our requests are reparented to
the agent rather than to init; they become zombies when they exit and
`OrphanReaper` collects them without touching the pids `Popen` still owns.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import secrets
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Container, Iterable

import psutil

__all__ = [
    "MARKER_ENV",
    "new_token",
    "enable_subreaper",
    "find_tree",
    "signal_tree",
    "kill_tree",
    "escalate",
    "OrphanReaper",
    "reap_orphans",
]

log = logging.getLogger("shoal.proctree")

MARKER_ENV = "SHOAL_REQUEST"

# Rounds of SIGKILL-and-rescan before giving up: SIGKILL cannot be caught, so only a
# process forking faster than we scan (a fork bomb) or stuck in uninterruptible
# sleep survives this many; we log it rather than spin forever.
SIGKILL_ROUNDS = 100

# prctl(2) option number from <linux/prctl.h>.
_PR_SET_CHILD_SUBREAPER = 36

_counter = itertools.count(1)


def new_token() -> str:
    """A token naming one request: unique within this agent and across agents.

    The pid and counter make it unique here; the random part keeps a restarted
    agent that reuses the pid from matching processes left over by its
    predecessor.
    """
    return f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"


def enable_subreaper() -> bool:
    """Make this process adopt orphaned descendants instead of init.

    A grandchild whose parent exits is then reparented to us, so it stays
    findable and, once dead, reapable by `OrphanReaper`. Lasts for the life of
    the process and is not inherited across fork.

    Returns:
        True if the kernel accepted it; False off Linux or when prctl fails.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        status = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    if status != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


# -- surveying ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    """One live process as the scan saw it."""

    proc: psutil.Process
    ppid: int
    pgid: int | None
    marker: str | None  # value of MARKER_ENV; None when absent or unreadable


@dataclass(frozen=True, slots=True)
class _Tree:
    """The request's live processes, and whether its process group is still its own."""

    members: tuple[_Seen, ...]
    owns_group: bool


def _maybe_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _maybe_marker(proc: psutil.Process) -> str | None:
    try:
        marker: str | None = proc.environ().get(MARKER_ENV)
        return marker
    except (psutil.Error, OSError):
        return None


def _scan() -> list[_Seen]:
    """Every live (non-zombie) process we may signal, except ourselves."""
    me, uid = os.getpid(), os.getuid()
    seen: list[_Seen] = []
    for proc in psutil.process_iter(["ppid", "uids", "status"]):
        info = proc.info
        if proc.pid == me or info["status"] in (None, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        if uid != 0 and (info["uids"] is None or info["uids"].real != uid):
            continue
        seen.append(_Seen(proc, info["ppid"] or 0, _maybe_pgid(proc.pid), _maybe_marker(proc)))
    return seen


def _owns_root(pid: int, root: _Seen | None, token: str) -> bool:
    """Whether `pid` still names the request's root (see the module docstring)."""
    if pid <= 0 or pid == os.getpgrp():
        return False  # killpg would hit our own group, or every group we may signal
    if root is None:
        return _owns_unseen_root(pid)
    if root.marker is not None:
        return root.marker == token
    return root.ppid == os.getpid()


def _owns_unseen_root(pid: int) -> bool:
    """A root the scan skipped is ours if it is gone or is our unreaped zombie child.

    While its pid is taken by our zombie, or not taken at all, no other process
    can lead a group with that number.
    """
    try:
        return bool(psutil.Process(pid).ppid() == os.getpid())
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _descendants(seen: Iterable[_Seen], roots: set[int]) -> set[int]:
    """`roots` plus every process below them in the parent chain."""
    children: dict[int, list[int]] = defaultdict(list)
    for s in seen:
        children[s.ppid].append(s.proc.pid)
    found, stack = set(roots), list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _survey(pid: int, token: str) -> _Tree:
    seen = _scan()
    by_pid = {s.proc.pid: s for s in seen}
    owns_group = _owns_root(pid, by_pid.get(pid), token)
    roots = {s.proc.pid for s in seen if s.marker == token}
    if owns_group:
        roots |= {s.proc.pid for s in seen if s.proc.pid == pid or s.pgid == pid}
    chosen = _descendants(seen, roots)
    return _Tree(tuple(by_pid[p] for p in sorted(chosen)), owns_group)


def find_tree(pid: int, token: str) -> list[psutil.Process]:
    """Every live process belonging to the request rooted at `pid` and marked `token`.

    Zombies are left out: they are already dead and only wait for their parent.
    Without root privileges only processes of our own real uid are considered.

    Returns:
        The members, sorted by pid; empty when the request has nothing left running.
    """
    return [s.proc for s in _survey(pid, token).members]


# -- signalling --------------------------------------------------------------


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill(proc: psutil.Process, sig: int) -> bool:
    """Signal `proc` unless it has exited or its pid now names another process."""
    try:
        if not proc.is_running():
            return False
        os.kill(proc.pid, sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        return False
    return True


def signal_tree(pid: int, token: str, sig: int) -> int:
    """Send `sig` once to every member of the request's tree.

    The group gets one killpg(); members outside it are signalled one by one.
    Nobody gets the signal twice, which matters for programs that treat a
    second SIGINT as "stop now". Processes that exit meanwhile are skipped.

    Returns:
        How many processes were signalled.
    """
    return _send(_survey(pid, token), pid, sig)


def _send(tree: _Tree, pid: int, sig: int) -> int:
    group_hit = tree.owns_group and _killpg(pid, sig)
    count = 0
    for member in tree.members:
        if group_hit and member.pgid == pid:
            count += 1
        elif _kill(member.proc, sig):
            count += 1
    return count


async def _gone_within(pid: int, token: str, grace: float, poll: float) -> bool:
    """Wait up to `grace` seconds for the tree to empty.

    A full scan costs a read of every process on the machine, so between scans
    we only poll the members already known; once they are all gone we rescan,
    which catches whatever they forked meanwhile.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    members = find_tree(pid, token)
    while members:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll)
        members = [p for p in members if _alive(p)] or find_tree(pid, token)
    return True


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _kill_until_gone(pid: int, token: str, poll: float) -> None:
    """SIGKILL and rescan until nothing is left, so late forks die too."""
    for _ in range(SIGKILL_ROUNDS):
        tree = _survey(pid, token)
        if not tree.members:
            return
        _send(tree, pid, signal.SIGKILL)
        await asyncio.sleep(poll)
    survivors = [p.pid for p in find_tree(pid, token)]
    if survivors:
        log.warning("request %s: processes %s survived %d SIGKILL rounds", token, survivors, SIGKILL_ROUNDS)


async def escalate(pid: int, token: str,
                   signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL),
                   grace: float = 5.0, poll: float = 0.05) -> None:
    """Send each of `signals` to the tree in turn, `grace` seconds apart, until it is empty.

    A catchable signal is followed by SIGCONT so that stopped members wake up
    to handle it. Whatever is left after the last signal is SIGKILLed
    (repeatedly, so processes forked meanwhile die too); SIGKILL in `signals`
    goes straight to that step.
    """
    for sig in signals:
        if sig == signal.SIGKILL:
            break
        tree = _survey(pid, token)
        _send(tree, pid, sig)
        if sig != signal.SIGCONT:
            _send(tree, pid, signal.SIGCONT)
        if await _gone_within(pid, token, grace, poll):
            return
    await _kill_until_gone(pid, token, poll)


async def kill_tree(pid: int, token: str, first_signal: int = signal.SIGTERM,
                    grace: float = 5.0, poll: float = 0.05) -> None:
    """Send `first_signal` to the tree; after `grace` seconds SIGKILL whatever remains.

    Processes that trap or ignore `first_signal` are still killed, and so are
    ones forked during the grace period: every poll rescans the tree.
    """
    await escalate(pid, token, (first_signal, signal.SIGKILL), grace=grace, poll=poll)


# -- reaping -----------------------------------------------------------------


class OrphanReaper:
    """Collects the exit status of orphans reparented to this (subreaper) process.

    Nothing else waits for them: `Popen` waits only for its own pid. Only zombies
    are reaped, so a live adopted process is never waited for, and pids in
    `known` are skipped so their `Popen` objects still get their status. Call
    `reap` from the thread that registers new `Popen` pids, so a pid is in
    `known` before it can be seen here.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self.reaped_total = 0

    def reap(self, known: Container[int]) -> list[int]:
        """Reap our zombie children whose pids are not in `known`.

        Returns:
            The pids reaped by this call.
        """
        reaped = [child.pid for child in self._zombie_children() if child.pid not in known and _waitpid(child.pid)]
        self.reaped_total += len(reaped)
        return reaped

    def _zombie_children(self) -> list[psutil.Process]:
        zombies = []
        for child in self._me.children():
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.append(child)
            except psutil.NoSuchProcess:
                continue
        return zombies


def _waitpid(pid: int) -> bool:
    """Reap `pid` if it has exited; False if someone else got it first."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


async def reap_orphans(known: Container[int], interval: float = 1.0) -> None:
    """Reap adopted orphans every `interval` s until cancelled, leaving the pids in `known` to their owners."""
    reaper = OrphanReaper()
    while True:
        await asyncio.sleep(interval)
        reaper.reap(known)
