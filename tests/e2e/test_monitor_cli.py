"""Monitoring commands end to end: metrics, top, check and ping against real agents on loopback."""

from __future__ import annotations

import json
import re
import socket

import psutil
import pytest

from shoal.agent.config import KeyPolicy
from shoal.hostio.keyfile import write_key_file
from shoal.agent.server import software_version
from shoal.controller.cli.main import main
from shoal.controller.client import AgentClient
from shoal.controller.fleet import ConnectOptions
from shoal.controller.monitor import FleetMonitor, clock_offset, gather_metrics, ping_fleet
from shoal.protocol.errors import RemoteCommandError
from tests.agents import AgentThread, running_agents, target_for


def _closed_port() -> str:
    """A loopback address nobody listens on: bound, then closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 3}


# -- library ------------------------------------------------------------------

async def test_metrics_through_an_agent_match_psutil_here() -> None:
    async with running_agents(1) as (agent,):
        client = await AgentClient.connect(target_for(agent))
        try:
            snap = await client.metrics()
        finally:
            await client.close()
    assert snap["host"] == socket.gethostname()
    assert snap["cpu"]["count"] == psutil.cpu_count()
    assert 0.0 <= snap["cpu"]["percent"] <= 100.0
    assert snap["memory"]["total"] == psutil.virtual_memory().total
    assert snap["boot_time"] == pytest.approx(psutil.boot_time(), abs=2)
    assert snap["procs"] >= 1 and len(snap["load"]) == 3
    root = [d for d in snap["disks"] if d["mount"] == "/"]
    if root:
        assert root[0]["total"] == psutil.disk_usage("/").total
    assert snap["agent_rss"] > 0


async def test_metrics_refused_for_a_key_without_metrics_rights(tmp_path) -> None:
    key = write_key_file(tmp_path / "ops.key")
    policy = KeyPolicy(name="ops", file=str(tmp_path / "ops.key"), commands=("uptime",))
    async with running_agents(policies=(policy,)) as (agent,):
        client = await AgentClient.connect(target_for(agent, "h1"), key=key)
        try:
            with pytest.raises(RemoteCommandError) as info:
                await client.metrics()
        finally:
            await client.close()
        round_ = await gather_metrics([target_for(agent, "h1")], ConnectOptions(key=key))
    assert info.value.code == "permission_denied"
    assert "metrics not allowed" in round_.snapshots["h1"]
    assert round_.status == 1 and not round_.unreachable


async def test_monitor_keeps_one_connection_across_rounds() -> None:
    async with running_agents(1) as (agent,):
        async with FleetMonitor([target_for(agent, "h1")]) as monitor:
            first = await monitor.metrics()
            client = monitor.clients["h1"]
            second = await monitor.metrics()
            assert monitor.clients["h1"] is client
            assert len(agent.sessions) == 1
    assert isinstance(first.snapshots["h1"], dict) and isinstance(second.snapshots["h1"], dict)


async def test_ping_offset_near_zero_on_loopback() -> None:
    async with running_agents(2) as agents:
        targets = [target_for(a, f"h{i}") for i, a in enumerate(agents)]
        async with FleetMonitor(targets) as monitor:
            reports = await ping_fleet(monitor, count=4, interval=0.0)
    for report in reports:
        assert report.error is None and len(report.rtts) == 4
        assert abs(report.offset) < 0.5
        assert report.version == f"shoal-agent/{software_version()}"


def test_clock_offset_formula() -> None:
    # Peer 10 s ahead, 1 s each way, 0.5 s holding the probe.
    assert clock_offset(100.0, 111.0, 111.5, 102.5) == pytest.approx(10.0)


# -- shoal metrics --------------------------------------------------------------

def _parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A small exposition-format reader: families with their TYPE, samples with labels."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    sample = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("gauge", "counter") and name not in typed
            typed.add(name)
            families[name] = []
        elif line.startswith("# HELP "):
            continue
        else:
            m = sample.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name, body, value = m.groups()
            assert name in typed, f"sample before its TYPE: {line!r}"
            labels = {k: v for k, v, _ in label.findall(body)}
            families[name].append((labels, float(value)))
    return families


def test_prometheus_has_one_sample_per_host_per_metric(agents: AgentThread, capsys) -> None:
    assert main(["metrics", agents.targets_spec(), "--prometheus"]) == 0
    families = _parse_prometheus(capsys.readouterr().out)
    hosts = set(agents.addresses)
    for name in ("shoal_up", "shoal_cpu_percent", "shoal_load1", "shoal_memory_total_bytes",
                 "shoal_processes", "shoal_uptime_seconds", "shoal_agent_rss_bytes",
                 "shoal_network_received_bytes_total"):
        samples = families[name]
        assert sorted(s[0]["host"] for s in samples) == sorted(hosts), name
    assert all(v == 1 for _, v in families["shoal_up"])
    assert {v for _, v in families["shoal_memory_total_bytes"]} == {psutil.virtual_memory().total}


def test_metrics_table_and_json(agents: AgentThread, capsys) -> None:
    down = _closed_port()
    assert main(["metrics", f"{agents.targets_spec()},{down}", "--sort", "cpu"]) == 255
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["HOST", "CPU%"]
    assert lines[-1].split() == [down, "unreachable:", "connection", "refused"]
    assert sorted(line.split()[0] for line in lines[1:4]) == sorted(agents.addresses)
    assert main(["metrics", agents.targets_spec(), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["host"] for r in records) == sorted(agents.addresses)
    assert all(r["metrics"]["cpu"]["count"] == psutil.cpu_count() for r in records)


@pytest.mark.parametrize("argv", [["metrics", "--json"], ["ping", "-c", "1", "--json"]], ids=["metrics", "ping"])
def test_json_views_give_unreachable_hosts_the_fields_of_exit_events(agents: AgentThread, capsys,
                                                                      argv: list[str]) -> None:
    down = _closed_port()
    assert main([argv[0], f"{agents.addresses[0]},{down}", *argv[1:]]) == 255
    records = {r["host"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert {k: records[down][k] for k in ("ok", "unreachable", "error", "error_code")} == {
        "ok": False, "unreachable": True, "error": "connection refused", "error_code": "unreachable"}
    up = records[agents.addresses[0]]
    assert (up["ok"], up["unreachable"], up["error"], up["error_code"]) == (True, False, None, None)


def test_metrics_textfile_is_written_whole(agents: AgentThread, tmp_path, capsys) -> None:
    path = tmp_path / "shoal.prom"
    assert main(["metrics", agents.targets_spec(), "--prometheus", "--textfile", str(path)]) == 0
    assert capsys.readouterr().out == ""
    assert "shoal_up" in _parse_prometheus(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["shoal.prom"]


# -- shoal check ----------------------------------------------------------------

@pytest.mark.parametrize("args, status, word", [
    (["--crit", "procs>0"], 2, "CRITICAL"),
    (["--warn", "procs>0"], 1, "WARNING"),
    (["--warn", "procs<0,cpu>100", "--crit", "disk>100,mem>100"], 0, "OK"),
])
def test_check_exit_codes(agents: AgentThread, capsys, args: list[str], status: int, word: str) -> None:
    assert main(["check", agents.targets_spec(), *args]) == status
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"SHOAL {word} - ")
    assert " | " in lines[0]  # perfdata follows
    assert len(lines) == 4 and all(line.split(":")[0] + ":" + line.split(":")[1] in agents.addresses
                                   for line in lines[1:])


def test_check_perfdata_names_every_host(agents: AgentThread, capsys) -> None:
    main(["check", agents.targets_spec(), "--warn", "procs<0"])
    perf = capsys.readouterr().out.splitlines()[0].split(" | ", 1)[1].split()
    assert sorted(p.split("=")[0] for p in perf) == sorted(f"'{a}_procs'" for a in agents.addresses)


@pytest.mark.parametrize("flag, status, word", [([], 2, "CRITICAL"), (["--unreachable-unknown"], 3, "UNKNOWN")])
def test_check_unreachable_host(capsys, flag: list[str], status: int, word: str) -> None:
    down = _closed_port()
    assert main(["check", down, "--warn", "cpu>90", *flag]) == status
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"SHOAL {word} - {down} unreachable (connection refused) | '{down}_cpu'=U;90;;0;100"


def test_check_perfdata_has_every_checked_metric_of_every_host(agents: AgentThread, capsys) -> None:
    # Graphs need every series every time: hosts well inside the thresholds and
    # hosts that did not answer ("U") alike.
    down = _closed_port()
    assert main(["check", f"{agents.targets_spec()},{down}", "--warn", "cpu>100", "--crit", "procs<0"]) == 2
    perf = dict(p.split("=", 1) for p in capsys.readouterr().out.splitlines()[0].split(" | ", 1)[1].split())
    assert sorted(perf) == sorted(f"'{h}_{m}'" for h in [*agents.addresses, down] for m in ("cpu", "procs"))
    assert perf[f"'{down}_cpu'"] == "U;100;;0;100" and perf[f"'{down}_procs'"] == "U;;0:;0"
    assert all(not perf[f"'{a}_procs'"].startswith("U") for a in agents.addresses)


def test_check_output_for_500_hosts_keeps_the_first_line_under_8k(capsys) -> None:
    port = _closed_port().rpartition(":")[2]
    pattern = f"127.0.[1-2].[1-250]:{port}"
    assert main(["check", pattern, "--yes", "--warn", "cpu>80,mem>90,disk>85,load1>4",
                 "--unreachable-unknown"]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines[0].encode()) <= 8192
    assert lines[0].startswith("SHOAL UNKNOWN - ") and "; and 490 more | " in lines[0]
    # The rest of the perfdata follows the 500 long-output lines, after a "|".
    assert all(" | " not in line for line in lines[1:500])
    long_output, _, first_rest = lines[500].partition(" | ")
    assert long_output.endswith(": UNKNOWN - unreachable (connection refused)")
    items = lines[0].split(" | ", 1)[1].split() + [first_rest, *lines[501:]]
    hosts = [f"127.0.{a}.{b}:{port}" for a in (1, 2) for b in range(1, 251)]
    assert sorted(i.split("=")[0] for i in items) == sorted(
        f"'{h}_{m}'" for h in hosts for m in ("cpu", "mem", "disk", "load1"))
    assert all(i.split("=")[1].startswith("U;") for i in items)


@pytest.mark.parametrize("argv", [
    ["check"],
    ["check", "127.0.0.1:1", "--warn", "cpu>9", "--no-such-option"],
    ["check", "127.0.0.1:1", "--warn", "cpu>9", "--fanout", "many"],
])
def test_check_usage_errors_are_unknown_under_checks_usage(capsys, argv: list[str]) -> None:
    # 2 would be CRITICAL to the monitoring system: a typo must not page anyone.
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("usage: shoal check ") and "\nshoal check: error: " in err


def test_other_subcommands_keep_exit_2_for_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "127.0.0.1:1", "--no-such-option", "--", "true"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: shoal run ")


def test_check_bad_threshold_is_unknown(capsys) -> None:
    assert main(["check", "127.0.0.1:1", "--warn", "cpu>>9"]) == 3
    assert capsys.readouterr().out.startswith("SHOAL UNKNOWN - --warn: bad threshold 'cpu>>9'")


# -- shoal ping and top -----------------------------------------------------------

def test_ping_shows_version_and_small_offset(agents: AgentThread, capsys) -> None:
    assert main(["ping", agents.targets_spec(), "-c", "2", "-i", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOST", "MIN", "AVG", "MAX", "OFFSET", "VERSION"]
    for line in lines[1:]:
        host, rmin, ravg, rmax, offset, version = line.split()
        assert host in agents.addresses and version == software_version()
        assert abs(float(offset.rstrip("s"))) < 0.5


def test_ping_flags_skew_and_unreachable(agents: AgentThread, capsys) -> None:
    spec = agents.addresses[0]
    # No real clock is off on loopback; a negative limit cannot be given, but 0 is
    # exceeded by any non-zero estimate. Use JSON to read the exact figures.
    status = main(["ping", spec, "-c", "1", "--max-offset", "0", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["skewed"] == (record["offset"] != 0)
    assert status == (1 if record["skewed"] else 0)
    down = _closed_port()
    assert main(["ping", f"{spec},{down}", "-c", "1"]) == 255
    assert f"{down}  unreachable: connection refused" in capsys.readouterr().out


def test_top_prints_one_table_per_refresh_when_piped(agents: AgentThread, capsys) -> None:
    down = _closed_port()
    assert main(["top", f"{agents.targets_spec()},{down}", "-d", "0.05", "-n", "3"]) == 0
    out = capsys.readouterr().out
    frames = out.split("\n\n")
    assert len(frames) == 3
    for frame in frames:
        lines = frame.strip("\n").splitlines()
        assert lines[0].startswith("shoal top - ") and "4 hosts, 1 unreachable" in lines[0]
        assert lines[1].split()[0] == "HOST"
        assert f"{down}  unreachable: connection refused" in lines
    assert "\x1b[" not in out
