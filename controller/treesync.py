"""Recursive put as a sync: rsync's trailing-slash rule, skip what is there, --delete.

`put -r SRC... REMOTE`: REMOTE is a directory on every host (created when missing,
its parents too with `mkdir`). A directory source written with a trailing `/`
sends its contents into REMOTE; without it, it becomes `REMOTE/<name>`; a file
source becomes `REMOTE/<name>`. Rerunning the same put therefore converges.

For each directory source the host is asked what its copy holds (LIST_TREE) and
each file is compared with it: with `checksum` by sha256 (computed by the agent,
no data sent), else with `preserve` by size and mtime; without either every file
is sent. `delete` removes what the host has below the copy and the source lacks
(REMOVE_PATHS); `dry_run` only lists what would be sent and removed.

Every path below a copy's root is sent with that root as PUT_FILE `tree`, so the
agent refuses one that crosses a symlink; the controller also refuses, from the
listing, a source file or directory where the host has a link, and leaves the
rest of the tree to go on.

Directories and small files below a copy's root travel many to a request
(`shoal.controller.putbatch`) to agents that announce `put_batch`; larger files
are streamed one at a time, each chunk read once for every host.

With `user`, every request (listing, creating, sending, deleting) acts with that
user's rights on the host, so a sync can do no more than the user could.


`get -r` is shoal.controller.treeget.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from shoal.hostio.manifest import file_sha256
from shoal.protocol.errors import ErrorCode, ShoalError

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out
from shoal.controller.fleet import ConnectOptions, FleetResult
from shoal.controller.result import Result
from shoal.controller.targets import Target
from shoal.controller.put import FanoutPut, HostPut, PutOptions, PutRequest
from shoal.controller.putbatch import Batcher, batchable
from shoal.controller.transfer import TRANSFER_FAILED, NoProgress, Progress, connect_or_result
from shoal.controller.transferplan import PlanItem, PutPlan
from shoal.controller.tree import HostStats, RemoveRequest, SyncOutcome, check_tree_features, list_remote, tree_path

__all__ = ["SyncOptions", "HostSync", "sync_fleet"]

# Two mtimes within this many seconds are the same: a time set from a float with
# nanosecond rounding reads back a few hundred nanoseconds off.
MTIME_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a recursive put compares and cleans: see the module docstring."""

    preserve: bool = False
    owner: bool = False
    checksum: bool = False
    delete: bool = False
    dry_run: bool = False
    mkdir: bool = False
    user: str | None = None  # act as this user on the hosts


class HostSync(HostPut):
    """One host's part in a recursive put: its roots, what it lacks, what it has too much of."""

    def __init__(self, client: AgentClient, remote_path: str, plan: PutPlan, sources: list[str],
                 options: SyncOptions, progress: Progress) -> None:
        super().__init__(client, remote_path, plan, PutOptions(options.preserve, options.owner, options.user), progress)
        self.sources = sources
        self.sync = options
        self.stats = HostStats()
        self.root = remote_path  # the resolved REMOTE once created
        self.wanted: set[int] = set()
        self.deletions: dict[int, list[str]] = {}
        self.conflicts: dict[int, list[str]] = {}  # --delete: the host's kind differs; removed first
        self._dir_sources = {item.source for item in plan.items if item.is_dir and not item.relative}
        self._destinations: set[str] = set()  # every path the sources put on this host
        self.deletions_at: set[str] = set()  # bases already cleaned: sources may share one

    def base(self, source: int) -> str:
        """Where source `source` lands on this host."""
        if self.sources[source].endswith("/") and self._is_dir_source(source):
            return self.root
        name = os.path.basename(self.sources[source].rstrip("/")) or self.sources[source]
        return tree_path(self.root, name)

    def _is_dir_source(self, source: int) -> bool:
        return source in self._dir_sources

    def _fields(self, item: PlanItem) -> dict[str, Any]:
        fields: dict[str, Any] = {"size": item.size, "mode": item.mode, "mkdir": item.is_dir,
                                  "path": tree_path(self.base(item.source), item.relative), "tree": self.root}
        if self.options.preserve and not item.is_dir:
            fields["mtime"] = item.mtime
        if self.options.owner:
            fields["owner"] = list(item.owner)
        return self.as_user(fields)

    def batch_entry(self, item: PlanItem, sha256: str) -> dict[str, Any]:
        """This item as an entry of a PUT_BATCH (`shoal.controller.putbatch`)."""
        entry: dict[str, Any] = {"path": tree_path(self.base(item.source), item.relative), "mode": item.mode}
        if item.is_dir:
            entry["dir"] = True
        else:
            entry.update(size=item.size, sha256=sha256)
            if self.options.preserve:
                entry["mtime"] = item.mtime
        if self.options.owner:
            entry["owner"] = list(item.owner)
        return entry

    @property
    def batches(self) -> bool:
        """Whether this host takes PUT_BATCH (agents before it take files one at a time)."""
        return "put_batch" in self.client.features

    def advance(self, n: int) -> None:
        super().advance(n)
        self.stats.bytes += n

    async def prepare(self, hashes: LocalHashes) -> None:
        """Create REMOTE (unless a dry run), list each copy, choose what to send and delete."""
        try:
            if self.sync.user is not None:  # before anything is made: the listing must be the user's too
                check_tree_features(self.client, self.sync.user)
            if not self.sync.dry_run:
                done = await PutRequest(self.client, self.as_user({"path": self.remote_path, "mkdir": True,
                                                                   "parents": self.sync.mkdir})).wait_done()
                self.root = done.path
            self._destinations = {tree_path(self.base(i.source), i.relative) for i in self.plan.items}
            for index, source in enumerate(self.sources):
                await self._prepare_source(index, hashes)
        except ShoalError as exc:
            self.error = exc
        self.planned = sum(self.plan.items[i].size for i in self.wanted)

    async def _prepare_source(self, source: int, hashes: LocalHashes) -> None:
        items = [(i, item) for i, item in enumerate(self.plan.items) if item.source == source]
        if not self._is_dir_source(source):
            self.wanted.update(i for i, _ in items)
            return
        if not self.sync.dry_run:  # the copy's root: refused by the agent if it is a link
            top = self.plan.items[items[0][0]]
            await PutRequest(self.client, self._fields(top)).wait_done()
        have = await list_remote(self.client, self.base(source), self.sync.checksum, self.sync.user) or {}
        refused: set[str] = set()
        conflicts = self.conflicts.setdefault(source, [])
        for i, item in items[1:]:
            if _has_ancestor_in(item.relative, refused):
                continue
            entry = have.get(item.relative)
            if entry is not None and entry.get("type") == "link":
                refused.add(item.relative)
                self.stats.refused.append(tree_path(self.base(source), item.relative))
            elif entry is not None and self.sync.delete and entry.get("type") != ("dir" if item.is_dir else "file"):
                conflicts.append(item.relative)  # a file where the source has a directory, or the reverse
                self.wanted.add(i)
            elif item.is_dir:
                if entry is None or entry.get("type") != "dir":
                    self.wanted.add(i)
            elif await self._same(item, entry, hashes):
                self.stats.skipped += 1
            else:
                self.wanted.add(i)
        if self.sync.delete and self.base(source) not in self.deletions_at:
            self.deletions_at.add(self.base(source))
            base = self.base(source)  # what any source (several may share a base) puts there is kept
            keep = {rel for rel in have if tree_path(base, rel) in self._destinations}
            self.deletions[source] = _extras(have, keep, conflicts)

    async def _same(self, item: PlanItem, entry: dict[str, Any] | None, hashes: LocalHashes) -> bool:
        """Whether the host's entry already is this file, by the chosen comparison."""
        if entry is None or entry.get("type") != "file" or entry.get("size") != item.size:
            return False
        if self.sync.checksum:
            return entry.get("sha256") == await hashes.get(item.local)
        if self.sync.preserve:
            mtime = entry.get("mtime")
            return isinstance(mtime, (int, float)) and abs(mtime - item.mtime) < MTIME_SLACK
        return False

    def wants(self, index: int) -> bool:
        return self.ok and index in self.wanted

    def note_dry_run(self) -> None:
        """List what would happen instead of doing it."""
        for i in sorted(self.wanted):
            item = self.plan.items[i]
            if not item.is_dir:
                self.stats.would_send.append(tree_path(self.base(item.source), item.relative))
        for found in (self.conflicts, self.deletions):
            for source, paths in found.items():
                self.stats.would_delete.extend(tree_path(self.base(source), rel) for rel in paths)

    async def delete_conflicts(self) -> None:
        """Before sending: remove what is in the way of a source path of another kind."""
        await self._remove(self.conflicts)

    async def delete_extras(self) -> None:
        """After sending: remove what the source lacks."""
        await self._remove(self.deletions)

    async def _remove(self, found: dict[int, list[str]]) -> None:
        for source, paths in found.items():
            if paths and self.ok:
                try:
                    self.stats.deleted += await RemoveRequest(self.client, self.base(source), paths,
                                                              self.sync.user).wait()
                except ShoalError as exc:
                    self.error = exc

    def result(self) -> Result:
        if self.error is None and self.stats.refused:
            first = self.stats.refused[0]
            more = f" (and {len(self.stats.refused) - 1} more)" if len(self.stats.refused) > 1 else ""
            reason = f"{first}: is a symbolic link; nothing is written through links{more}"
            return Result(self.host, TRANSFER_FAILED, error=reason, error_code=ErrorCode.BAD_PATH,
                          duration=time.monotonic() - self._start)
        return super().result()


def _extras(have: dict[str, dict[str, Any]], source: set[str], removed: list[str]) -> list[str]:
    """The host's paths the source lacks, each directory once (not its contents).

    Paths below `removed` (conflicts, deleted whole before sending) are gone already.
    """
    extras: list[str] = []
    gone = set(removed)
    for relative in sorted(have, key=lambda r: (r.count("/"), r)):
        if relative in source or _has_ancestor_in(relative, gone):
            continue
        extras.append(relative)
        gone.add(relative)
    return extras


def _has_ancestor_in(relative: str, paths: set[str]) -> bool:
    parts = relative.split("/")
    return any("/".join(parts[:n]) in paths for n in range(1, len(parts)))


class LocalHashes:
    """sha256 of local files for --checksum, each computed once (off the loop) for all hosts."""

    def __init__(self) -> None:
        self._known: dict[str, asyncio.Future[str]] = {}

    async def get(self, path: str) -> str:
        if path not in self._known:
            loop = asyncio.get_running_loop()
            self._known[path] = asyncio.ensure_future(loop.run_in_executor(None, file_sha256, path))
        return await self._known[path]


class FanoutSync(FanoutPut):
    """FanoutPut where each item goes only to the hosts that lack it, small ones in batches."""

    def __init__(self, hosts: list[HostSync], plan: PutPlan) -> None:
        super().__init__(list(hosts), plan)
        self.sync_hosts = hosts
        self._index = -1
        self._in_batch = False  # the current item goes in batches to the hosts that take them

    def live(self) -> list[HostPut]:
        """The hosts the current item is sent to alone."""
        return [h for h in self.sync_hosts if h.wants(self._index) and not (self._in_batch and h.batches)]

    async def run(self) -> None:
        batcher = Batcher(self.plan.items)
        for index, item in enumerate(self.plan.items):
            self._index, self._in_batch = index, batchable(item)
            if self._in_batch:
                batched = [h for h in self.sync_hosts if h.wants(index) and h.batches]
                if batched:
                    await batcher.add(index, batched)
            else:
                await batcher.drain()  # what comes alone may lie in a batch's directories
            hosts = self.live()
            if hosts:
                await self._send_alone(item, hosts)
        await batcher.drain()

    async def _send_alone(self, item: PlanItem, hosts: list[HostPut]) -> None:
        for host in hosts:
            host.begin(item)
        if not item.is_dir:
            await self._copy(item, hosts)
        for host in hosts:
            if await host.step(lambda r: r.wait_done()) is not None and not item.is_dir:
                assert isinstance(host, HostSync)
                host.stats.sent += 1


async def sync_fleet(targets: list[Target], connect: ConnectOptions, plan: PutPlan, sources: list[str],
                     remote_path: str, *, options: SyncOptions = SyncOptions(), fanout: int = 64,
                     progress: Progress | None = None) -> SyncOutcome:
    """Recursive put of `plan` (made from `sources`) to `remote_path` on every target.

    Per-host failures become results; a local file failing to read mid-way raises
    FileTransferError after aborting every connection of its group.
    """
    progress = progress or NoProgress()
    out = SyncOutcome(FleetResult(), {})
    start = time.monotonic()
    hashes = LocalHashes()
    step = max(1, fanout)
    for first in range(0, len(targets), step):
        group = targets[first:first + step]
        out.fleet.results.extend(await _sync_group(group, connect, plan, sources, remote_path, options,
                                                   progress, hashes, out.stats))
    out.fleet.elapsed = time.monotonic() - start
    return out


async def _sync_group(group: list[Target], connect: ConnectOptions, plan: PutPlan, sources: list[str],
                      remote_path: str, options: SyncOptions, progress: Progress, hashes: LocalHashes,
                      stats: dict[str, HostStats]) -> list[Result]:
    attempts = await fan_out(group, lambda t: connect_or_result(connect, t))
    clients = [a for a in attempts if isinstance(a, AgentClient)]
    failed = [a for a in attempts if isinstance(a, Result)]
    hosts = [HostSync(c, remote_path, plan, sources, options, progress) for c in clients]
    try:
        await fan_out(hosts, lambda h: h.prepare(hashes))
        if options.dry_run:
            for host in hosts:
                host.note_dry_run()
        else:
            progress.expect(sum(h.planned for h in hosts if h.ok))
            await fan_out(hosts, lambda h: h.delete_conflicts())
            await FanoutSync(hosts, plan).run()
            await fan_out(hosts, lambda h: h.delete_extras())
    except BaseException:
        for client in clients:
            client.abort()
        raise
    await asyncio.gather(*(c.close() for c in clients))
    for host in hosts:
        stats[host.host] = host.stats
    return failed + [h.result() for h in hosts]
