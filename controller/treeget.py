"""Recursive get: a host's directory tree into a local directory of its own.

`get -r REMOTE LOCAL_DIR` lists REMOTE on each host and fetches it into
`LOCAL_DIR/<host>/<name>` (`REMOTE/`: into `LOCAL_DIR/<host>`), each file atomic
and checked by sha256 as `get` is, links recreated as links, empty directories kept.
No local path is written through a link. With `user` the tree is listed and every
file read with that user's rights.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.manifest import path_below
from shoal.protocol.errors import ErrorCode, ShoalError

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.fleet import ConnectOptions, FleetResult
from shoal.controller.get import get_file, host_directory_name
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target
from shoal.controller.transfer import Progress, connect_or_result
from shoal.controller.tree import HostStats, SyncOutcome, list_remote, tree_path

__all__ = ["get_tree_fleet"]


async def get_tree_fleet(targets: list[Target], connect: ConnectOptions, remote_path: str, local_dir: str, *,
                         preserve: bool = False, fanout: int = 64, progress: Progress | None = None,
                         user: str | None = None) -> SyncOutcome:
    """Fetch the directory `remote_path` from every target into `local_dir/<host>/…`.

    With `user` the tree is listed and every file read with that user's rights.
    """
    name = "" if remote_path.endswith("/") else os.path.basename(remote_path.rstrip("/"))
    local_dir = os.path.abspath(local_dir)
    out = SyncOutcome(FleetResult(), {})
    start = time.monotonic()

    async def one(target: Target) -> Result:
        attempt = await connect_or_result(connect, target)
        if isinstance(attempt, Result):
            return attempt
        stats = out.stats[target.name] = HostStats()
        local = os.path.join(local_dir, host_directory_name(target.name))
        try:
            return await _get_tree(attempt, remote_path, local, name, preserve, progress, stats, user)
        finally:
            await attempt.close()

    await fan_out(targets, one, limit=per_gateway(fanout, lambda t: t), on_done=out.fleet.results.append)
    out.fleet.elapsed = time.monotonic() - start
    return out


async def _get_tree(client: AgentClient, remote: str, host_dir: str, name: str, preserve: bool,
                    progress: Progress | None, stats: HostStats, user: str | None) -> Result:
    start = time.monotonic()
    try:
        have = await list_remote(client, remote, user=user)
        if have is None:
            raise FileTransferError(ErrorCode.NOT_FOUND, remote)
        base = os.path.join(host_dir, name) if name else host_dir
        await asyncio.get_running_loop().run_in_executor(None, _make_local_dirs, host_dir, base, have)
        for relative, entry in have.items():
            local = os.path.join(base, relative)
            if entry.get("type") == "link":
                await asyncio.get_running_loop().run_in_executor(None, _make_link, base, local, entry)
            elif entry.get("type") == "file":
                path_below(_real(base), base, local)  # no local link to write through
                result = await get_file(client, tree_path(remote.rstrip("/") or "/", relative), local,
                                        preserve=preserve, progress=progress, tree=remote.rstrip("/") or "/",
                                        user=user)
                if not result.ok:
                    return result
                stats.sent += 1
                stats.bytes += int(entry.get("size") or 0)
        await asyncio.get_running_loop().run_in_executor(None, _set_dir_modes, base, have)
    except ShoalError as exc:
        return failure_result(client.name, exc)
    return Result(client.name, 0, duration=time.monotonic() - start)


def _real(path: str) -> Path:
    return Path(os.path.realpath(path))


def _make_local_dirs(host_dir: str, base: str, have: dict[str, dict[str, Any]]) -> None:
    """Create the host's directory, the copy's root and every directory of the listing, link-free."""
    try:
        os.makedirs(host_dir, exist_ok=True)
    except OSError as err:
        raise map_os_error(err, host_dir) from err
    _mkdir(base)
    for relative, entry in have.items():
        if entry.get("type") == "dir":
            path = os.path.join(base, relative)
            path_below(_real(base), base, path)
            _mkdir(path)


def _mkdir(path: str) -> None:
    """Make one directory (0700 until its contents are in); an existing real directory is fine."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise FileTransferError(ErrorCode.BAD_PATH if os.path.islink(path) else ErrorCode.NOT_DIRECTORY, path,
                                    "exists and is not a directory (links are not followed)") from None
    except OSError as err:
        raise map_os_error(err, path) from err


def _make_link(base: str, local: str, entry: dict[str, Any]) -> None:
    """Recreate a remote symlink as a link (never followed), replacing a file or link there."""
    target = entry.get("target")
    if not isinstance(target, str):
        return
    path_below(_real(base), base, local, final_link=True)
    temp = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.shoal-link-{secrets.token_hex(8)}")
    try:
        if os.path.islink(local) and os.readlink(local) == target:
            return
        os.symlink(target, temp)
        os.rename(temp, local)
    except OSError as err:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise map_os_error(err, local) from err


def _set_dir_modes(base: str, have: dict[str, dict[str, Any]]) -> None:
    """Give each directory its remote mode, deepest first, once its files are in."""
    dirs = sorted((r for r, e in have.items() if e.get("type") == "dir"), key=lambda r: -r.count("/"))
    for relative in dirs:
        mode = have[relative].get("mode")
        path = os.path.join(base, relative)
        try:
            if isinstance(mode, int) and stat.S_ISDIR(os.lstat(path).st_mode):
                os.chmod(path, stat.S_IMODE(mode))
        except OSError as err:
            raise map_os_error(err, path) from err
