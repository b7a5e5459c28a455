"""A client's PING_LINKS: the agents of many links pinged at once, answered in parts.

A ping round through LINKED frames costs the hub a frame to decode and one to
build per agent on top of the agent's own PING and PONG; for thousands of agents
that is most of the hub's work. PING_LINKS names every link in one frame, the
hub sends each agent a PING with the client's `t0`, and gathers the answers:
everything that came in during one turn of the loop goes back in one LINK_PONGS
(more when one would outgrow the client's frame limit), the last marked `done`
(PROTOCOL.md section 7).

A link named more than once is pinged once and answered as often as named. The
PINGs go out `PINGS_PER_TURN` at a time, so a round of tens of thousands never
holds the hub's other clients for longer than one slice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING

from shoal.protocol.errors import ShoalConnectionError, ShoalError
from shoal.protocol.messages import LinkPongs, Pong

if TYPE_CHECKING:
    from shoal.controller.hub.local import LocalSession

__all__ = ["PingRound", "PINGS_PER_TURN"]

# Agents pinged in one turn of the loop (a few ms of the hub's time).
PINGS_PER_TURN = 256
# Room in a LINK_PONGS for its frame head and member names, and the most one
# answered link adds to the body: an id (a request id, at most 10 digits) and two
# floats (at most 24 characters each), their commas.
_PART_OVERHEAD = 256
_ANSWERED_BYTES = 64
# A lost link's reason is cut here, so each entry's size is known before it is encoded.
_REASON_CHARS = 200


class PingRound:
    """PING_LINKS `request_id` of `session`: the links still to answer and the answers not yet sent."""

    def __init__(self, session: LocalSession, request_id: int, link_ids: list[int], t0: float) -> None:
        self.session = session
        self.request_id = request_id
        self.t0 = t0
        self._named = Counter(link_ids)  # each distinct link, and how often it was named
        self._todo = list(self._named)
        self._started = 0  # of _todo
        self.waiting = 0  # PINGs sent, PONG (or loss) still to come
        self._links: list[int] = []
        self._t1: list[float] = []
        self._t2: list[float] = []
        self._lost: list[int] = []
        self._reasons: list[str] = []
        self._part_bytes = _PART_OVERHEAD
        self._part_due = False
        self.finished = False

    def start(self) -> None:
        """Ping the next PINGS_PER_TURN links (one that is not open is lost at once), and
        come back next turn for more."""
        links = self.session.links
        batch = self._todo[self._started:self._started + PINGS_PER_TURN]
        self._started += len(batch)
        for link_id in batch:
            link = links.get(link_id)
            if link is None:
                self._lose(link_id, f"no open link {link_id}")
                continue
            try:
                link.agent.client.send_ping(self._answer_for(link_id), self.t0)
            except ShoalError as exc:
                self._lose(link_id, _reason(exc))
            else:
                self.waiting += 1
        if self._started < len(self._todo):
            asyncio.get_running_loop().call_soon(self.start)
        self._part_soon()

    def _answer_for(self, link_id: int) -> Callable[[Pong | ShoalConnectionError], None]:
        def answer(pong: Pong | ShoalConnectionError) -> None:
            self.waiting -= 1
            if isinstance(pong, Pong):
                t1, t2 = float(pong.t1), float(pong.t2)  # an integer time as a float: its size is known
                for _ in range(self._named[link_id]):
                    self._room_for(_ANSWERED_BYTES)
                    self._links.append(link_id)
                    self._t1.append(t1)
                    self._t2.append(t2)
            else:
                self._lose(link_id, _reason(pong))
            self._part_soon()
        return answer

    def _lose(self, link_id: int, reason: str) -> None:
        reason = reason[:_REASON_CHARS]
        size = _ANSWERED_BYTES + len(encode_basestring_ascii(reason))  # as the body will spell it
        for _ in range(self._named[link_id]):
            self._room_for(size)
            self._lost.append(link_id)
            self._reasons.append(reason)

    def _room_for(self, size: int) -> None:
        """Send what is gathered first if `size` more bytes would not fit the client's frame."""
        if self._part_bytes + size > self.session.conn.peer_max_frame and (self._links or self._lost):
            self._send(done=False)
        self._part_bytes += size

    def _part_soon(self) -> None:
        if not self._part_due:
            self._part_due = True
            asyncio.get_running_loop().call_soon(self._send_part)

    def _send_part(self) -> None:
        self._part_due = False
        done = self.waiting == 0 and self._started == len(self._todo)
        if not self.finished and (self._links or self._lost or done):
            self._send(done)

    def _send(self, done: bool) -> None:
        part = LinkPongs(self.request_id, links=self._links, t1=self._t1, t2=self._t2, lost=self._lost,
                         reasons=self._reasons, done=done)
        self._links, self._t1, self._t2, self._lost, self._reasons = [], [], [], [], []
        self._part_bytes = _PART_OVERHEAD
        if done:
            self.finished = True
            self.session.rounds.pop(self.request_id, None)
        self.session.send(part)


def _reason(exc: ShoalError) -> str:
    return exc.reason if isinstance(exc, ShoalConnectionError) else str(exc)
