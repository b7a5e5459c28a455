"""Round-trip time, agent version and clock offset of every host.

    shoal ping TARGETS [-c N] [--max-offset SECS] [--json]

Each host gets N probes (default 3) over its authenticated connection. The
offset is the host's clock minus ours, estimated NTP-style from the probe with
the least network delay: ((t1 - t0) + (t2 - t3)) / 2, where t0/t3 are our send
and receive times and t1/t2 the agent's. Its error is at most half that
probe's round trip. Hosts off by more than --max-offset (default 1 s) are
flagged "SKEW".

Exit status: 0 every host answered within the offset limit; 1 a host's clock
is off by more than --max-offset; 255 a host was unreachable (wins over 1);
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.escape import escape_text
from shoal.controller.metricsview import host_order_key
from shoal.controller.monitor import FleetMonitor, PingReport, ping_fleet
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, targets_from_args
from shoal.controller.result import UNREACHABLE, outcome_fields

__all__ = ["add_arguments", "run", "format_reports", "exit_status"]

_HEADER = ("HOST", "MIN", "AVG", "MAX", "OFFSET", "VERSION", "")
SKEW_FLAG = "SKEW"
_AGENT_PREFIX = "shoal-agent/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    g = parser.add_argument_group("probes")
    g.add_argument("-c", "--count", type=int, default=3, metavar="N", help="probes per host (default 3)")
    g.add_argument("-i", "--interval", type=float, default=0.2, metavar="SECS",
                   help="pause between a host's probes (default 0.2)")
    g.add_argument("--max-offset", type=float, default=1.0, metavar="SECS",
                   help="flag hosts whose clock is off by more than SECS (default 1)")
    g.add_argument("--json", action="store_true", help="one JSON object per host per line")
    add_connect_options(parser)


def _version(report: PingReport) -> str:
    """The agent's own word for its version, so escaped for the table."""
    return escape_text(report.version.removeprefix(_AGENT_PREFIX)) or "-"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


def _row(report: PingReport, max_offset: float) -> list[str]:
    flag = SKEW_FLAG if report.skewed(max_offset) else ""
    offset = "-" if report.offset is None else f"{report.offset:+.3f}s"
    return [report.host, _ms(report.rtt_min), _ms(report.rtt_avg), _ms(report.rtt_max), offset,
            _version(report), flag]


def format_reports(reports: list[PingReport], max_offset: float) -> str:
    """An aligned table, one row per host; an unreachable host's row gives the reason."""
    ordered = sorted(reports, key=lambda r: host_order_key(r.host))
    rows = [_row(r, max_offset) for r in ordered if r.error is None]
    widths = [max(len(r[i]) for r in [list(_HEADER), *rows]) for i in range(len(_HEADER))]
    widths[0] = max([widths[0], *(len(r.host) for r in ordered)])
    lines = ["  ".join(h.ljust(w) if i in (0, 5) else h.rjust(w) for i, (h, w) in enumerate(zip(_HEADER, widths)))]
    full = iter(rows)
    for report in ordered:
        if report.error is not None:
            lines.append(f"{report.host.ljust(widths[0])}  unreachable: {escape_text(report.error)}")
            continue
        cells = next(full)
        lines.append("  ".join(c.ljust(w) if i in (0, 5, 6) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))))
    return "".join(line.rstrip() + "\n" for line in lines)


def format_json_lines(reports: list[PingReport], max_offset: float) -> str:
    """One object per host: ok, unreachable, error, error_code (as `run -o json` exit
    events have them), then rtt figures in seconds, offset, version, skewed when ok."""
    out = []
    for r in sorted(reports, key=lambda r: host_order_key(r.host)):
        record: dict[str, object] = {"host": r.host, **outcome_fields(r.error, r.error_code)}
        if r.error is None:
            record.update(rtt_min=r.rtt_min, rtt_avg=r.rtt_avg, rtt_max=r.rtt_max,
                          offset=r.offset, version=_version(r), skewed=r.skewed(max_offset))
        out.append(json.dumps(record, separators=(",", ":")) + "\n")
    return "".join(out)


def exit_status(reports: list[PingReport], max_offset: float) -> int:
    """255 when a host is unreachable, else 1 when one is skewed, else 0."""
    if any(r.error is not None for r in reports):
        return UNREACHABLE
    return 1 if any(r.skewed(max_offset) for r in reports) else 0


async def _ping(args: argparse.Namespace) -> list[PingReport]:
    options = connect_options_from_args(args)
    monitor = FleetMonitor(targets_from_args(args), options, args.fanout)
    async with options, monitor:
        return await ping_fleet(monitor, args.count, args.interval)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "ping")
    if args.count < 1:
        raise ConfigError(f"need at least one probe, got {args.count}", "--count")
    if args.interval < 0 or args.max_offset < 0:
        raise ConfigError("--interval and --max-offset cannot be negative", "ping")
    reports = asyncio.run(_ping(args))
    formatter = format_json_lines if args.json else format_reports
    display.out(formatter(reports, args.max_offset).encode("utf-8", "replace"))
    return exit_status(reports, args.max_offset)
