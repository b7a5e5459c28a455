"""Fleet metric views: the table a person reads, JSON lines and Prometheus text."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from shoal.agent.metrics import Sampler
from shoal.controller.metricsview import (
    format_json_lines,
    format_prometheus,
    format_table,
    fullest_disk,
    human_duration,
    metric_value,
)
from shoal.protocol.errors import ConfigError


def snap(cpu: float = 10.0, mem: float = 20.0, load1: float = 0.5, disks: dict[str, float] | None = None,
         procs: int = 100, uptime: float = 3600.0, version: str = "1.2.3") -> dict[str, Any]:
    """A snapshot shaped like the agent's, with the figures a test cares about."""
    disks = {"/": 30.0} if disks is None else disks
    return {
        "host": "x", "time": 1.7e9, "agent_version": version, "agent_rss": 30_000_000,
        "boot_time": 1.7e9 - uptime, "uptime": uptime,
        "cpu": {"percent": cpu, "per_core": [cpu, cpu], "count": 2},
        "load": [load1, 0.25, 0.125],
        "memory": {"total": 8 << 30, "available": 4 << 30, "used": 4 << 30, "percent": mem},
        "swap": {"total": 1 << 30, "used": 0, "percent": 0.0},
        "disks": [{"mount": m, "device": f"/dev/sd{i}", "fstype": "ext4", "total": 1000,
                   "used": int(p * 10), "free": 1000 - int(p * 10), "percent": p}
                  for i, (m, p) in enumerate(disks.items())],
        "net": {k: 7 for k in ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
                               "errin", "errout", "dropin", "dropout")},
        "procs": procs,
    }


def hosts_in(table: str) -> list[str]:
    return [line.split()[0] for line in table.splitlines()[1:]]


# -- readers -------------------------------------------------------------------

def test_fullest_disk_and_metric_values() -> None:
    s = snap(disks={"/": 40.0, "/var": 97.5, "/home": 12.0})
    assert fullest_disk(s) == ("/var", 97.5)
    assert metric_value(s, "disk") == 97.5
    assert metric_value(s, "load5") == 0.25
    assert metric_value(s, "procs") == 100


def test_malformed_fields_read_as_missing() -> None:
    s = snap()
    s["cpu"] = "busy"
    s["load"] = [True]
    s["disks"] = [{"mount": "/", "percent": "full"}, 5]
    assert metric_value(s, "cpu") is None
    assert metric_value(s, "load1") is None and metric_value(s, "load15") is None
    assert fullest_disk(s) is None


@pytest.mark.parametrize("seconds, text", [
    (42, "42s"), (7 * 60 + 3, "7m3s"), (5 * 3600 + 12 * 60 + 9, "5h12m"),
    (3 * 86400 + 4 * 3600 + 59, "3d4h"), (None, "-"), (-1, "-"),
])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


# -- table -----------------------------------------------------------------------

def test_table_row_shows_each_column() -> None:
    table = format_table({"web01": snap(cpu=12.5, mem=35.25, load1=0.42, disks={"/": 10.0, "/var": 81.2},
                                        procs=312, uptime=3 * 86400 + 4 * 3600)})
    header, row = table.splitlines()
    assert header.split() == ["HOST", "CPU%", "LOAD1", "MEM%", "SWAP%", "DISK%", "PROCS", "UPTIME", "VERSION"]
    assert row.split() == ["web01", "12.5", "0.42", "35.2", "0.0", "81.2", "/var", "312", "3d4h", "1.2.3"]
    assert table.endswith("\n")


def test_table_columns_are_aligned() -> None:
    table = format_table({"a": snap(cpu=5.0, procs=7, version="0.1"),
                          "long-host-name-01": snap(cpu=100.0, procs=12345, version="10.20.30")})
    spans = [[m.span() for m in re.finditer(r"\S+", line)] for line in table.splitlines()]
    assert len({row[1][1] for row in spans}) == 1, table  # CPU% right-aligned under its header
    assert len({row[-3][1] for row in spans}) == 1, table  # PROCS likewise
    assert len({row[0][0] for row in spans}) == 1 and len({row[-1][0] for row in spans}) == 1, table


def test_table_natural_host_order_without_sort() -> None:
    table = format_table({"web10": snap(), "web2": snap(), "web1": "connection refused", "db1": snap()})
    assert hosts_in(table) == ["db1", "web1", "web2", "web10"]


def test_failed_hosts_show_their_reason() -> None:
    lines = format_table({"web1": "connection refused", "web2": None, "web3": snap()}).splitlines()
    assert lines[1].split(None, 1) == ["web1", "connection refused"]
    assert lines[2].split(None, 1) == ["web2", "no metrics"]


@pytest.mark.parametrize("sort, expected", [
    ("cpu", ["c", "a", "b"]),
    ("mem", ["b", "c", "a"]),
    ("load", ["a", "b", "c"]),
    ("disk", ["b", "a", "c"]),
])
def test_sorting_is_descending_with_failed_hosts_last(sort: str, expected: list[str]) -> None:
    snapshots = {
        "a": snap(cpu=50.0, mem=10.0, load1=3.0, disks={"/": 60.0}),
        "b": snap(cpu=20.0, mem=90.0, load1=2.0, disks={"/": 10.0, "/data": 99.0}),
        "c": snap(cpu=70.0, mem=40.0, load1=1.0, disks={"/": 5.0}),
        "0-down": "timed out",
    }
    assert hosts_in(format_table(snapshots, sort)) == [*expected, "0-down"]


def test_hosts_missing_the_sort_metric_come_after_those_with_it() -> None:
    blind = snap()
    blind["cpu"] = None
    table = format_table({"a": blind, "b": snap(cpu=1.0), "c": "refused", "d": snap(cpu=2.0)}, "cpu")
    assert hosts_in(table) == ["d", "b", "a", "c"]
    assert table.splitlines()[3].split()[1] == "-"


def test_equal_values_keep_natural_host_order() -> None:
    table = format_table({"n10": snap(cpu=5.0), "n9": snap(cpu=5.0), "n1": snap(cpu=9.0)}, "cpu")
    assert hosts_in(table) == ["n1", "n9", "n10"]


def test_unknown_sort_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="swap") as info:
        format_table({"a": snap()}, "swap")
    assert info.value.where == "--sort"


def test_control_characters_cannot_break_table_rows() -> None:
    table = format_table({"a": snap(disks={"/mnt/x\ny": 50.0}), "b": "refused\nby peer"})
    assert len(table.splitlines()) == 3


def test_empty_fleet_table_is_just_the_header() -> None:
    assert format_table({}).splitlines()[0].startswith("HOST")
    assert len(format_table({}).splitlines()) == 1


# -- JSON lines --------------------------------------------------------------------

def test_json_lines_one_object_per_host() -> None:
    s = snap(cpu=33.0)
    text = format_json_lines({"web2": s, "web10": "connection refused", "web1": None})
    records = [json.loads(line) for line in text.splitlines()]
    ok = {"ok": True, "unreachable": False, "error": None, "error_code": None}
    assert records == [
        {"host": "web1", "ok": False, "unreachable": False, "error": "no metrics", "error_code": "error"},
        {"host": "web2", **ok, "metrics": s},
        {"host": "web10", "ok": False, "unreachable": False, "error": "connection refused", "error_code": "error"},
    ]
    assert text.endswith("\n") and text.count("\n") == 3


# -- Prometheus ----------------------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Sample = tuple[str, tuple[tuple[str, str], ...], float]


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """Parse `a="x",b="y"` strictly, undoing the format's escapes."""
    labels, pos = [], 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match, f"bad labels at {text[pos:]!r}"
        value = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group()], match.group(2))
        labels.append((match.group(1), value))
        pos = match.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' in {text!r}"
            pos += 1
    return tuple(labels)


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """Check text format rules line by line; return the TYPE of each family and the samples."""
    assert text == "" or text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: list[Sample] = []
    finished: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helps, f"second HELP for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name not in types, line
            assert not any(s[0] == name for s in samples), f"TYPE after samples of {name}"
            types[name] = kind
        else:
            assert not line.startswith("#"), line
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.group(1), parse_labels(match.group(2) or ""), float(match.group(3))
            assert name in types, f"sample of {name} before its TYPE"
            if name != current:
                assert name not in finished, f"samples of {name} are not contiguous"
                if current:
                    finished.add(current)
                current = name
            samples.append((name, labels, value))
    keys = [(n, labels) for n, labels, _ in samples]
    assert len(keys) == len(set(keys)), "duplicate sample"
    return types, samples


def values_of(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for n, labels, value in samples if n == name}


def test_prometheus_output_parses_and_labels_every_host() -> None:
    types, samples = parse_exposition(format_prometheus({"web1": snap(cpu=12.5), "web2": snap(cpu=80.0)}))
    assert values_of(samples, "shoal_cpu_percent") == {(("host", "web1"),): 12.5, (("host", "web2"),): 80.0}
    for name in types:
        hosts = [dict(labels)["host"] for n, labels, _ in samples if n == name]
        assert set(hosts) == {"web1", "web2"}, name
        if name not in ("shoal_cpu_core_percent",) and not name.startswith("shoal_filesystem_"):
            assert sorted(hosts) == ["web1", "web2"], f"{name} should have one sample per host"


def test_prometheus_counters_and_gauges() -> None:
    types, _ = parse_exposition(format_prometheus({"web1": snap()}))
    counters = {n for n, kind in types.items() if kind == "counter"}
    assert counters == {n for n in types if n.startswith("shoal_network_")}
    assert all(n.endswith("_total") for n in counters)
    assert {"shoal_load1", "shoal_load5", "shoal_load15", "shoal_uptime_seconds", "shoal_boot_time_seconds",
            "shoal_processes", "shoal_agent_rss_bytes", "shoal_memory_total_bytes",
            "shoal_swap_used_bytes"} <= {n for n, kind in types.items() if kind == "gauge"}


def test_prometheus_up_and_failed_hosts() -> None:
    _, samples = parse_exposition(format_prometheus({"ok": snap(), "down": "connection refused", "mute": None}))
    assert values_of(samples, "shoal_up") == {(("host", "down"),): 0, (("host", "mute"),): 0, (("host", "ok"),): 1}
    assert {n for n, labels, _ in samples if dict(labels)["host"] != "ok"} == {"shoal_up"}


def test_prometheus_extra_labels() -> None:
    _, samples = parse_exposition(format_prometheus({"h": snap(disks={"/": 10.0, "/var": 50.0}, version="2.0")}))
    assert values_of(samples, "shoal_filesystem_used_bytes") == {
        (("host", "h"), ("mount", "/"), ("device", "/dev/sd0"), ("fstype", "ext4")): 100,
        (("host", "h"), ("mount", "/var"), ("device", "/dev/sd1"), ("fstype", "ext4")): 500,
    }
    assert set(values_of(samples, "shoal_cpu_core_percent")) == {(("host", "h"), ("core", "0")),
                                                                 (("host", "h"), ("core", "1"))}
    assert values_of(samples, "shoal_agent_info") == {(("host", "h"), ("version", "2.0")): 1}


def test_prometheus_label_values_are_escaped() -> None:
    weird = 'we"ird\\path\nnext'
    text = format_prometheus({'host"1': snap(disks={weird: 10.0})})
    _, samples = parse_exposition(text)
    mounts = {dict(labels)["mount"] for labels in values_of(samples, "shoal_filesystem_size_bytes")}
    assert mounts == {weird}
    assert {dict(labels)["host"] for _, labels, _ in samples} == {'host"1'}


def test_prometheus_skips_missing_sections_without_empty_families() -> None:
    partial = snap()
    partial["swap"] = None
    partial["load"] = "n/a"
    types, samples = parse_exposition(format_prometheus({"a": partial, "b": snap()}))
    assert {dict(labels)["host"] for n, labels, _ in samples if n == "shoal_swap_used_bytes"} == {"b"}
    only_partial = parse_exposition(format_prometheus({"a": partial}))[0]
    assert "shoal_swap_used_bytes" not in only_partial and "shoal_load1" not in only_partial


def test_prometheus_of_no_hosts_is_empty() -> None:
    assert format_prometheus({}) == ""


def test_real_snapshot_renders_in_every_view() -> None:
    sampler = Sampler()
    sampler.tick()
    snapshots = {"local": sampler.snapshot(), "gone": "connection refused"}
    types, samples = parse_exposition(format_prometheus(snapshots))
    assert values_of(samples, "shoal_memory_total_bytes")[(("host", "local"),)] == \
        snapshots["local"]["memory"]["total"]
    assert hosts_in(format_table(snapshots, "disk")) == ["local", "gone"]
    assert len(format_json_lines(snapshots).splitlines()) == 2
