"""Detached commands: those that keep running, output to a file, after their controller left."""

from __future__ import annotations

import logging
import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.agent.commands import CommandRequest

__all__ = ["DetachedCommands", "output_path"]

log = logging.getLogger("shoal.agent")


class DetachedCommands:
    """Detached commands whose controller left, by pid, until they finish or the agent closes."""

    def __init__(self) -> None:
        self.requests: dict[int, CommandRequest] = {}

    def adopt(self, req: CommandRequest) -> None:
        """Keep a detached command running after its controller left."""
        self.requests[req.child.pid] = req
        log.info("controller left; detached pid %d keeps running, output in %s", req.child.pid, req.output_file)

    def forget(self, req: CommandRequest) -> None:
        """The command finished."""
        self.requests.pop(req.child.pid, None)

    def kill_all(self) -> None:
        """Stop every detached command (agent shutdown): SIGTERM, SIGKILL half a second later."""
        for req in list(self.requests.values()):
            req.kill(15, 0.5)


def output_path(state_dir: str) -> str:
    """A fresh file under `state_dir` for one detached command's output."""
    directory = os.path.join(state_dir, "detached")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(6)}.out")
