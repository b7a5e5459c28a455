"""The fleet's metrics for Prometheus, from the hub: one scrape, every agent.

A standard-library HTTP server on its own thread answers `GET /metrics`: it asks
the hub's loop for one round of METRICS_REQUEST over the warm connections (the
one fan-out, each agent bounded by SCRAPE_TIMEOUT) and returns the text
exposition `shoal metrics --prometheus` prints, with `shoal_up` 1 for each agent
that answered and 0 for one that did not, or an inventory target not connected.
It binds to loopback unless told otherwise: metrics describe the fleet.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from shoal.protocol.errors import ShoalError

from shoal.controller.fanout import fan_out
from shoal.controller.hub.registry import HubAgent
from shoal.controller.metricsview import format_prometheus

if TYPE_CHECKING:
    from shoal.controller.hub.server import Hub

__all__ = ["start_metrics_server", "stop_metrics_server", "fleet_metrics", "SCRAPE_TIMEOUT"]

# Seconds one agent has to answer a scrape's METRICS_REQUEST before it counts as down.
SCRAPE_TIMEOUT = 5.0
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

    snapshots: dict[str, Any] = {t.name: hub.why_not_connected(t.name) for t in hub.settings.targets}
    snapshots.update(await fan_out(hub.registry.agents(), one))
    return format_prometheus(snapshots)


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        future = asyncio.run_coroutine_threadsafe(fleet_metrics(self.server.hub), self.server.loop)
        try:
            body = future.result(SCRAPE_TIMEOUT * 2).encode()
        except Exception:  # the hub is stopping, or a bug: Prometheus records the scrape as failed
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

    def __init__(self, address: tuple[str, int], hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.hub = hub
        self.loop = loop


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
