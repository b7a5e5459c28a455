"""The fleet's metrics for Prometheus, from the hub: one scrape, every agent.

A standard-library HTTP server on its own thread answers `GET /metrics`: it asks
the hub's loop for one round of METRICS_REQUEST over the warm connections (the
one fan-out, each agent bounded by SCRAPE_TIMEOUT) and returns the text
exposition `shoal metrics --prometheus` prints, with `shoal_up` 1 for each agent
that answered and 0 for one that did not, an inventory target not connected, or a
dial-in name that left and is still remembered (registry.Departed): alerts on
`shoal_up == 0` then fire for a dial-in host that died, as for any other.
It binds to loopback unless told otherwise: metrics describe the fleet.

Every local user can reach that port, not only the hub's, so what one scraper can
make the hub hold is bounded: at most MAX_SCRAPERS connections (each a thread),
the oldest still sending its request shed for a newcomer, and HTTP_TIMEOUT on
every read and write; a scraper that goes away is no traceback in the hub's log.
Scrapes that come while a round is out wait for it (`SharedRound`) instead of each
sending every agent a METRICS_REQUEST of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from shoal.protocol.errors import ShoalError

from shoal.controller.fanout import fan_out
from shoal.controller.hub.registry import HubAgent
from shoal.controller.metricsview import format_prometheus

if TYPE_CHECKING:
    from shoal.controller.hub.server import Hub

__all__ = ["start_metrics_server", "stop_metrics_server", "fleet_metrics", "SharedRound", "SCRAPE_TIMEOUT",
           "MAX_SCRAPERS", "HTTP_TIMEOUT"]

log = logging.getLogger("shoal.hub")

# Seconds one agent has to answer a scrape's METRICS_REQUEST before it counts as down.
SCRAPE_TIMEOUT = 5.0
# Connections served at once, each on a thread of its own: Prometheus keeps one per
# target, and a few more leave room for people with curl.
MAX_SCRAPERS = 16
# Seconds a scraper's socket may go without progress (sending its request, reading the answer).
HTTP_TIMEOUT = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def fleet_metrics(hub: Hub) -> str:
    """One round of every agent's metrics, as Prometheus text."""

    async def one(agent: HubAgent) -> tuple[str, dict[str, Any] | str]:
        try:
            return agent.name, await asyncio.wait_for(agent.client.metrics(), SCRAPE_TIMEOUT)
        except asyncio.TimeoutError:
            return agent.name, f"no metrics within {SCRAPE_TIMEOUT:g}s"
        except ShoalError as exc:
            return agent.name, getattr(exc, "reason", str(exc))

    snapshots: dict[str, Any] = {name: "left the hub" for name in hub.registry.departed.names()}
    snapshots.update({t.name: hub.why_not_connected(t.name) for t in hub.settings.targets})
    snapshots.update(await fan_out(hub.registry.agents(), one))
    return format_prometheus(snapshots)


class SharedRound:
    """The scrape round in flight, which every scrape arriving meanwhile waits for.

    Any local user reaches the port: sixteen scrapers at once must cost the fleet one
    round, not sixteen. A scrape that comes after a round ended starts the next, so
    what it gets is never older than its own arrival by more than one round.
    Lives in the hub's loop (scrapes come to it from the HTTP threads).
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._round: asyncio.Future[str] | None = None

    async def text(self) -> str:
        if self._round is None:
            self._round = asyncio.ensure_future(fleet_metrics(self.hub))
            self._round.add_done_callback(self._ended)
        else:
            log.debug("metrics endpoint: a scrape waits for the round in flight")
        # shielded: a scrape that gives up does not cancel the round for the others
        return await asyncio.shield(self._round)

    def _ended(self, round_: asyncio.Future[str]) -> None:
        """The next scrape starts a new round, and this one's text (megabytes for
        thousands of agents) is not kept until then."""
        if self._round is round_:
            self._round = None


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer
    timeout = HTTP_TIMEOUT

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.request_read(self.request)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        future = None
        try:  # the loop may be closing under us (the hub stopping): a 503 as for any failed scrape
            future = asyncio.run_coroutine_threadsafe(self.server.rounds.text(), self.server.loop)
            body = future.result(SCRAPE_TIMEOUT * 2).encode()
        except Exception:  # the hub is stopping, or a bug: Prometheus records the scrape as failed
            if future is not None:
                future.cancel()
            self.send_error(503, "metrics unavailable")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a scrape every 15 s is not news


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver's 5 makes a burst of connects wait 1 s per SYN dropped.
    request_queue_size = 4 * MAX_SCRAPERS

    def __init__(self, address: tuple[str, int], hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.hub = hub
        self.loop = loop
        self.rounds = SharedRound(hub)
        self._lock = threading.Lock()
        self._serving: dict[Any, bool] = {}  # each connection: still reading its request?

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve `request` on a thread of its own, within MAX_SCRAPERS (module docstring)."""
        with self._lock:
            if len(self._serving) >= MAX_SCRAPERS:
                reading = next((conn for conn, still in self._serving.items() if still), None)
                if reading is None:  # every one is in a scrape, which ends within its timeout
                    self.shutdown_request(request)
                    return
                del self._serving[reading]
                with contextlib.suppress(OSError):
                    reading.shutdown(socket.SHUT_RDWR)  # its thread's read ends; the thread cleans up
            self._serving[request] = True
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._serving.pop(request, None)

    def request_read(self, request: Any) -> None:
        """`request` has sent its whole request: no newcomer sheds it now."""
        with self._lock:
            if request in self._serving:
                self._serving[request] = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that went away or stalled is not news; anything else is a bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            log.error("metrics endpoint: internal error serving %s", client_address, exc_info=True)


def start_metrics_server(hub: Hub, host: str, port: int) -> tuple[_MetricsServer, str]:
    """Serve on host:port from a thread; the server and the address it is bound to."""
    server = _MetricsServer((host, port), hub, asyncio.get_running_loop())
    threading.Thread(target=server.serve_forever, name="shoal-hub-metrics", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    address = f"[{bound_host!s}]:{bound_port}" if ":" in str(bound_host) else f"{bound_host!s}:{bound_port}"
    return server, address


async def stop_metrics_server(server: object) -> None:
    assert isinstance(server, _MetricsServer)
    await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
    server.server_close()
