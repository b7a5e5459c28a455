"""Controller-side views of host metric snapshots: a table, JSON lines, Prometheus text.

Every view takes a mapping of host name to what that host gave us:

    dict   the agent's snapshot (schema in `shoal.agent.metrics`),
    str    why there is no snapshot (unreachable, refused, timed out...),
    None   the host answered but sent no metrics; shown as the reason "no metrics".

Snapshots come off the wire from agents of any version, so the readers here
tolerate missing or mistyped fields: anything that is not a finite number is
shown as "-" and left out of machine-readable output rather than raising.
Hosts are listed in natural order (web2 before web10). Each view returns text
whose every line ends in a newline, ready to write as is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from shoal.protocol.errors import ConfigError
from shoal.controller.escape import escape_text
from shoal.controller.result import outcome_fields

__all__ = [
    "METRICS",
    "SORT_KEYS",
    "Snapshots",
    "failure_reason",
    "format_json_lines",
    "format_prometheus",
    "format_table",
    "fullest_disk",
    "host_order_key",
    "human_duration",
    "metric_value",
]

Snapshots = Mapping[str, "Mapping[str, Any] | str | None"]

#: Scalar metrics a host can be sorted or checked by; "disk" is the fullest filesystem.
METRICS = ("cpu", "mem", "swap", "disk", "load1", "load5", "load15", "procs")

#: `format_table` sort names and the metric each sorts by (descending).
SORT_KEYS = {"cpu": "cpu", "mem": "mem", "load": "load1", "disk": "disk"}

NO_METRICS = "no metrics"

_PATHS: dict[str, tuple[str | int, ...]] = {
    "cpu": ("cpu", "percent"), "mem": ("memory", "percent"), "swap": ("swap", "percent"),
    "load1": ("load", 0), "load5": ("load", 1), "load15": ("load", 2), "procs": ("procs",),
}


def host_order_key(host: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting web2 before web10: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", host)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts if p)


def failure_reason(value: Mapping[str, Any] | str | None) -> str | None:
    """Why a host has no snapshot, or None when `value` is one."""
    if isinstance(value, Mapping):
        return None
    if isinstance(value, str):
        return value or "failed"
    return NO_METRICS if value is None else "malformed metrics"


def _number(value: Any) -> float | None:
    """`value` as a finite number, or None for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an integer no float holds: no exposition parser would take it either
        return None


def _dig(snapshot: Mapping[str, Any], path: Iterable[str | int]) -> Any:
    """Follow keys and list indexes into a snapshot; None when the shape differs."""
    node: Any = snapshot
    for step in path:
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            node = node[step]
        elif isinstance(step, str) and isinstance(node, Mapping):
            node = node.get(step)
        else:
            return None
    return node


def _disks(snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The well-formed filesystem entries of a snapshot."""
    disks = snapshot.get("disks")
    if not isinstance(disks, list):
        return []
    return [d for d in disks if isinstance(d, Mapping) and isinstance(d.get("mount"), str)]


def fullest_disk(snapshot: Mapping[str, Any]) -> tuple[str, float] | None:
    """(mount, percent used) of the fullest filesystem, or None when none is known."""
    usable = [(d["mount"], p) for d in _disks(snapshot) if (p := _number(d.get("percent"))) is not None]
    return max(usable, key=lambda item: item[1], default=None)


def metric_value(snapshot: Mapping[str, Any], metric: str) -> float | None:
    """One scalar of `METRICS` from a snapshot, or None when it is missing or malformed."""
    if metric == "disk":
        fullest = fullest_disk(snapshot)
        return None if fullest is None else fullest[1]
    return _number(_dig(snapshot, _PATHS[metric]))


def human_duration(seconds: float | None) -> str:
    """Two most significant units of a duration (3d4h, 5h12m, 7m3s, 42s); "-" if unknown."""
    if seconds is None or seconds < 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _ordered(snapshots: Snapshots) -> list[str]:
    return sorted(snapshots, key=host_order_key)


# -- table ------------------------------------------------------------------

_HEADER = ("HOST", "CPU%", "LOAD1", "MEM%", "SWAP%", "DISK%", "PROCS", "UPTIME", "VERSION")
_LEFT_ALIGNED = {0, 5, 8}


def _fixed(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _table_row(host: str, snapshot: Mapping[str, Any]) -> list[str]:
    """The cells of one reachable host's row."""
    fullest = fullest_disk(snapshot)
    procs = metric_value(snapshot, "procs")
    version = snapshot.get("agent_version")
    return [
        host,
        _fixed(metric_value(snapshot, "cpu"), 1),
        _fixed(metric_value(snapshot, "load1"), 2),
        _fixed(metric_value(snapshot, "mem"), 1),
        _fixed(metric_value(snapshot, "swap"), 1),
        "-" if fullest is None else f"{fullest[1]:.1f} {fullest[0]}",
        "-" if procs is None else str(int(procs)),
        human_duration(_number(snapshot.get("uptime"))),
        version if isinstance(version, str) else "-",
    ]


def _table_order(snapshots: Snapshots, sort: str | None) -> list[str]:
    """Hosts in display order: by metric descending, hosts lacking it next, failed last."""
    hosts = _ordered(snapshots)
    if sort is None:
        return hosts
    if sort not in SORT_KEYS:
        raise ConfigError(f"unknown sort key {sort!r} (choose from {', '.join(SORT_KEYS)})", "--sort")
    metric = SORT_KEYS[sort]

    def key(host: str) -> tuple[int, float]:
        value = snapshots[host]
        if not isinstance(value, Mapping):
            return (2, 0.0)
        number = metric_value(value, metric)
        return (1, 0.0) if number is None else (0, -number)

    return sorted(hosts, key=key)  # stable: natural host order breaks ties


def _render(cells: list[str], widths: list[int]) -> str:
    padded = [c.ljust(w) if i in _LEFT_ALIGNED else c.rjust(w)
              for i, (c, w) in enumerate(zip(cells, widths))]
    return "  ".join(padded).rstrip()


def format_table(snapshots: Snapshots, sort: str | None = None) -> str:
    """An aligned table, one row per host; a failed host's row shows its reason.

    Args:
        snapshots: host name -> snapshot, failure reason or None.
        sort: "cpu", "mem", "load" (1 minute) or "disk" (fullest filesystem)
            to sort by that metric descending, failed hosts last; None keeps
            natural host order.

    Raises:
        ConfigError: `sort` is not one of the above.
    """
    order = _table_order(snapshots, sort)
    rows: list[list[str]] = []
    for host in order:
        value = snapshots[host]
        cells = _table_row(host, value) if isinstance(value, Mapping) else [host, str(failure_reason(value))]
        rows.append([escape_text(c) for c in cells])  # a newline in a mount, an agent's error text
    full = [r for r in rows if len(r) == len(_HEADER)]
    widths = [max(len(r[i]) for r in [list(_HEADER), *full]) for i in range(len(_HEADER))]
    widths[0] = max([widths[0], *(len(r[0]) for r in rows)])
    lines = [_render(list(_HEADER), widths)]
    for row in rows:
        lines.append(_render(row, widths) if len(row) == len(_HEADER) else f"{row[0].ljust(widths[0])}  {row[1]}")
    return "".join(line + "\n" for line in lines)


# -- JSON lines --------------------------------------------------------------

def format_json_lines(snapshots: Snapshots, error_codes: Mapping[str, str | None] | None = None) -> str:
    """One JSON object per host per line: host, ok, unreachable, error, error_code (as
    `run -o json` exit events have them), and metrics when there is a snapshot."""
    lines = []
    for host in _ordered(snapshots):
        value = snapshots[host]
        reason = failure_reason(value)
        record: dict[str, Any] = {"host": host, **outcome_fields(reason, (error_codes or {}).get(host))}
        if reason is None:
            record["metrics"] = value
        lines.append(json.dumps(record, separators=(",", ":")) + "\n")
    return "".join(lines)



# -- Prometheus text exposition format ----------------------------------------
# https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4):
# a family's HELP and TYPE come once, before all of its samples, and its samples
# are contiguous; label values escape backslash, double quote and newline.

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]


@dataclass(frozen=True, slots=True)
class _Family:
    """One metric family and how to draw its samples from a snapshot."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    samples: Callable[[Mapping[str, Any]], list[Sample]]


def _scalar(*path: str | int) -> Callable[[Mapping[str, Any]], list[Sample]]:
    def samples(snapshot: Mapping[str, Any]) -> list[Sample]:
        value = _number(_dig(snapshot, path))
        return [] if value is None else [((), value)]
    return samples


def _core_samples(snapshot: Mapping[str, Any]) -> list[Sample]:
    cores = _dig(snapshot, ("cpu", "per_core"))
    if not isinstance(cores, list):
        return []
    return [((("core", str(i)),), v) for i, c in enumerate(cores) if (v := _number(c)) is not None]


def _filesystem(field: str) -> Callable[[Mapping[str, Any]], list[Sample]]:
    def samples(snapshot: Mapping[str, Any]) -> list[Sample]:
        found = []
        for disk in _disks(snapshot):
            labels = tuple((k, str(disk.get(k, ""))) for k in ("mount", "device", "fstype"))
            if (value := _number(disk.get(field))) is not None:
                found.append((labels, value))
        return found
    return samples


def _info_samples(snapshot: Mapping[str, Any]) -> list[Sample]:
    version = snapshot.get("agent_version")
    return [((("version", version),), 1)] if isinstance(version, str) else []


def _net(field: str, what: str) -> _Family:
    return _Family(f"shoal_network_{what}_total", "counter",
                   f"Network {what.replace('_', ' ')} since boot, all interfaces.", _scalar("net", field))


FAMILIES = (
    _Family("shoal_agent_info", "gauge", "Agent build information; always 1.", _info_samples),
    _Family("shoal_cpu_percent", "gauge", "CPU busy percent over the agent's last sampling window.",
            _scalar("cpu", "percent")),
    _Family("shoal_cpu_core_percent", "gauge", "Per-core CPU busy percent.", _core_samples),
    _Family("shoal_cpu_count", "gauge", "Logical CPUs.", _scalar("cpu", "count")),
    _Family("shoal_load1", "gauge", "1 minute load average.", _scalar("load", 0)),
    _Family("shoal_load5", "gauge", "5 minute load average.", _scalar("load", 1)),
    _Family("shoal_load15", "gauge", "15 minute load average.", _scalar("load", 2)),
    _Family("shoal_memory_total_bytes", "gauge", "Physical memory.", _scalar("memory", "total")),
    _Family("shoal_memory_available_bytes", "gauge", "Memory available without swapping.",
            _scalar("memory", "available")),
    _Family("shoal_memory_used_bytes", "gauge", "Memory in use.", _scalar("memory", "used")),
    _Family("shoal_swap_total_bytes", "gauge", "Swap space.", _scalar("swap", "total")),
    _Family("shoal_swap_used_bytes", "gauge", "Swap in use.", _scalar("swap", "used")),
    _Family("shoal_filesystem_size_bytes", "gauge", "Filesystem size.", _filesystem("total")),
    _Family("shoal_filesystem_used_bytes", "gauge", "Filesystem space used.", _filesystem("used")),
    _Family("shoal_filesystem_free_bytes", "gauge", "Filesystem space free to unprivileged users.",
            _filesystem("free")),
    _net("bytes_sent", "sent_bytes"),
    _net("bytes_recv", "received_bytes"),
    _net("packets_sent", "sent_packets"),
    _net("packets_recv", "received_packets"),
    _net("errin", "receive_errors"),
    _net("errout", "transmit_errors"),
    _net("dropin", "receive_drops"),
    _net("dropout", "transmit_drops"),
    _Family("shoal_uptime_seconds", "gauge", "Seconds since boot.", _scalar("uptime")),
    _Family("shoal_boot_time_seconds", "gauge", "Boot time, seconds since the epoch.", _scalar("boot_time")),
    _Family("shoal_processes", "gauge", "Number of processes.", _scalar("procs")),
    _Family("shoal_agent_rss_bytes", "gauge", "Resident memory of the shoal agent.", _scalar("agent_rss")),
)


def _escape_label(value: str) -> str:
    # A peer's JSON may hold lone surrogates ("\\ud800"), which UTF-8 cannot carry: one such
    # label must not make the whole exposition unencodable (the hub serves every host in one).
    value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_line(name: str, labels: Labels, value: float) -> str:
    body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    text = str(value) if isinstance(value, int) else repr(float(value))
    return f"{name}{{{body}}} {text}\n"


def _family_text(family: _Family, per_host: Iterable[tuple[str, list[Sample]]]) -> str:
    """HELP, TYPE and every host's samples of one family; "" when it has none."""
    lines = []
    for host, samples in per_host:
        seen: set[Labels] = set()
        for labels, value in samples:
            if labels not in seen:  # a malformed snapshot may repeat a mount
                seen.add(labels)
                lines.append(_sample_line(family.name, (("host", host), *labels), value))
    if not lines:
        return ""
    return f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.kind}\n" + "".join(lines)


def format_prometheus(snapshots: Snapshots) -> str:
    """Prometheus text exposition of every host, each sample labelled with `host`.

    `shoal_up` is 1 for a host with a snapshot and 0 otherwise; a host without
    a snapshot has no other samples.
    """
    hosts = _ordered(snapshots)
    reachable = [(h, v) for h in hosts if isinstance(v := snapshots[h], Mapping)]
    up = _Family("shoal_up", "gauge", "1 when the host's agent returned metrics, else 0.", lambda s: [])
    parts = [_family_text(up, [(h, [((), 1 if failure_reason(snapshots[h]) is None else 0)]) for h in hosts])]
    for family in FAMILIES:
        parts.append(_family_text(family, [(h, family.samples(s)) for h, s in reachable]))
    return "".join(parts)
