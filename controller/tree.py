"""What put -r and get -r share: asking a host about its tree, and what each host got.

LIST_TREE lists a directory tree (`list_remote`), REMOVE_PATHS removes entries
below one; with `user` both act with that user's rights, which only an agent
announcing `tree_user` honours (`check_tree_features` refuses at once otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.protocol.errors import ErrorCode, RemoteCommandError
from shoal.protocol.messages import ListTree, Message, Removed, RemovePaths, TreeEntries
from shoal.protocol.request import RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fleet import FleetResult
from shoal.controller.transfer import TRANSFER_FAILED, TransferRequest

__all__ = ["HostStats", "SyncOutcome", "ListTreeRequest", "RemoveRequest", "list_remote", "check_tree_features",
           "tree_path"]


@dataclass(slots=True)
class HostStats:
    """What one host got: files sent and skipped, content bytes moved, entries deleted.

    In a dry run `would_send` and `would_delete` name the paths instead.
    """

    sent: int = 0
    skipped: int = 0
    bytes: int = 0
    deleted: int = 0
    would_send: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SyncOutcome:
    fleet: FleetResult
    stats: dict[str, HostStats]


class ListTreeRequest(TransferRequest):
    """One LIST_TREE: gather TREE_ENTRIES until the one marked done."""

    def __init__(self, client: AgentClient, path: str, sha256: bool, user: str | None = None) -> None:
        super().__init__(client, RequestKind.LIST)
        self.entries: list[dict[str, Any]] = []
        self.done = False
        self._check_features(_tree_features(user))
        if self.error is None:
            self._send(ListTree(self.request_id, path=path, sha256=sha256, user=user, requires=_requires(user)))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, TreeEntries):
            self.entries.extend(msg.entries)
            if msg.done:
                self.done = True
                self._end()

    async def wait(self) -> list[dict[str, Any]]:
        await self._until(lambda: self.done)
        return self.entries


class RemoveRequest(TransferRequest):
    """One REMOVE_PATHS: wait for REMOVED."""

    def __init__(self, client: AgentClient, tree: str, paths: list[str], user: str | None = None) -> None:
        super().__init__(client, RequestKind.REMOVE)
        self.count: int | None = None
        self._check_features(_tree_features(user))
        if self.error is None:
            self._send(RemovePaths(self.request_id, tree=tree, paths=paths, user=user, requires=_requires(user)))

    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, Removed):
            self.count = msg.count
            self._end()

    async def wait(self) -> int:
        await self._until(lambda: self.count is not None)
        assert self.count is not None
        return self.count


def _tree_features(user: str | None) -> list[str]:
    """What the agent must announce to list or remove as `user` (an older one would do it as itself)."""
    return ["tree_user", "user"] if user is not None else []


def check_tree_features(client: AgentClient, user: str) -> None:
    """Refuse a sync as `user` at once (status 1) when the agent would list or delete as itself."""
    try:
        client.check_features(_tree_features(user))
    except RemoteCommandError as exc:
        exc.status = TRANSFER_FAILED
        raise


def _requires(user: str | None) -> list[str]:
    return ["user"] if user is not None else []


async def list_remote(client: AgentClient, path: str, sha256: bool = False,
                      user: str | None = None) -> dict[str, dict[str, Any]] | None:
    """What the directory `path` holds on this host (as `user` sees it), by relative path; None when missing."""
    try:
        entries = await ListTreeRequest(client, path, sha256, user).wait()
    except RemoteCommandError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return None
        raise
    return {entry["path"]: entry for entry in entries if isinstance(entry.get("path"), str)}


def tree_path(base: str, relative: str) -> str:
    """`relative` below `base` (the base itself when empty), as a remote path."""
    return f"{base.rstrip('/')}/{relative}" if relative else base
