"""A client's PING_LINKS: the agents of many links pinged at once, answered in parts.

A ping round through LINKED frames costs the hub a frame to decode and one to
build per agent on top of the agent's own PING and PONG; for thousands of agents
that is most of the hub's work. PING_LINKS names every link in one frame, the
hub sends each agent a PING with the client's `t0` (the body encoded once), and
gathers the answers: everything that came in during one turn of the loop goes
back in one LINK_PONGS, the last marked `done` (PROTOCOL.md section 7).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from shoal.protocol.errors import ShoalConnectionError, ShoalError
from shoal.protocol.messages import LinkPongs, Pong

if TYPE_CHECKING:
    from shoal.controller.hub.local import LocalSession

__all__ = ["PingRound"]


class PingRound:
    """PING_LINKS `request_id` of `session`: the links still to answer and the answers not yet sent."""

    def __init__(self, session: LocalSession, request_id: int) -> None:
        self.session = session
        self.request_id = request_id
        self.waiting = 0
        self._links: list[int] = []
        self._t1: list[float] = []
        self._t2: list[float] = []
        self._lost: list[int] = []
        self._reasons: list[str] = []
        self._part_due = False
        self._finished = False

    def start(self, link_ids: list[int], t0: float) -> None:
        """Ping the agent of every link named (one that is not open answers `lost` at once)."""
        links = self.session.links
        for link_id in link_ids:
            link = links.get(link_id)
            if link is None:
                self._lose(link_id, f"no open link {link_id}")
                continue
            try:
                link.agent.client.send_ping(self._answer_for(link_id), t0)
            except ShoalError as exc:
                self._lose(link_id, _reason(exc))
            else:
                self.waiting += 1
        self._part_soon()

    def _answer_for(self, link_id: int) -> Callable[[Pong | ShoalConnectionError], None]:
        def answer(pong: Pong | ShoalConnectionError) -> None:
            self.waiting -= 1
            if isinstance(pong, Pong):
                self._links.append(link_id)
                self._t1.append(pong.t1)
                self._t2.append(pong.t2)
            else:
                self._lose(link_id, _reason(pong))
            self._part_soon()
        return answer

    def _lose(self, link_id: int, reason: str) -> None:
        self._lost.append(link_id)
        self._reasons.append(reason)

    def _part_soon(self) -> None:
        if not self._part_due:
            self._part_due = True
            asyncio.get_running_loop().call_soon(self._send_part)

    def _send_part(self) -> None:
        self._part_due = False
        if self._finished or not (self._links or self._lost or self.waiting == 0):
            return
        self._finished = self.waiting == 0
        part = LinkPongs(self.request_id, links=self._links, t1=self._t1, t2=self._t2, lost=self._lost,
                         reasons=self._reasons, done=self.waiting == 0)
        self._links, self._t1, self._t2, self._lost, self._reasons = [], [], [], [], []
        self.session.send(part)


def _reason(exc: ShoalError) -> str:
    return exc.reason if isinstance(exc, ShoalConnectionError) else str(exc)
