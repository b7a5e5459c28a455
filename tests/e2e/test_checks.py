"""Health checks: threshold specs, per-host and fleet states, the plugin status line."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shoal.agent.metrics import Sampler
from shoal.controller.checks import CheckResult, State, Threshold, evaluate, parse_thresholds, worst
from shoal.protocol.errors import ConfigError

WARN = parse_thresholds("cpu>80,disk>85,mem>=95,load1>4")
CRIT = parse_thresholds("cpu>95,disk>95")


def snap(cpu: float = 10.0, mem: float = 20.0, load1: float = 0.5, disks: dict[str, float] | None = None,
         procs: int = 100) -> dict[str, Any]:
    """The parts of an agent snapshot that checks read."""
    disks = {"/": 30.0} if disks is None else disks
    return {
        "cpu": {"percent": cpu, "per_core": [cpu], "count": 1},
        "load": [load1, load1, load1],
        "memory": {"total": 100, "available": 50, "used": 50, "percent": mem},
        "swap": {"total": 0, "used": 0, "percent": 0.0},
        "disks": [{"mount": m, "device": "d", "fstype": "ext4", "total": 100, "used": 0, "free": 100,
                   "percent": p} for m, p in disks.items()],
        "procs": procs,
    }


# -- parsing -------------------------------------------------------------------

def test_parse_thresholds() -> None:
    assert parse_thresholds("cpu>80, disk >= 85% ,load15<0.5,procs<=3,SWAP>50") == [
        Threshold("cpu", ">", 80), Threshold("disk", ">=", 85), Threshold("load15", "<", 0.5),
        Threshold("procs", "<=", 3), Threshold("swap", ">", 50),
    ]
    assert parse_thresholds("  ") == []
    assert str(Threshold("mem", ">=", 95.0)) == "mem>=95"


@pytest.mark.parametrize("spec, culprit", [
    ("cpu>80,foo>3", "foo>3"),
    ("cpu>>80", "cpu>>80"),
    ("cpu=80", "cpu=80"),
    ("cpu>eighty", "cpu>eighty"),
    ("disk>nan", "disk>nan"),
    ("mem>", "mem>"),
    ("cpu>80,,mem>90", "stray comma"),
    ("cpu>80 disk>90", "cpu>80 disk>90"),
])
def test_bad_threshold_specs_name_the_bad_part(spec: str, culprit: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_thresholds(spec, "--critical")
    assert culprit in str(info.value)
    assert info.value.where == "--critical"


def test_threshold_validates_itself() -> None:
    with pytest.raises(ConfigError, match="unknown metric"):
        Threshold("iops", ">", 1)
    with pytest.raises(ConfigError, match="operator"):
        Threshold("cpu", "!=", 1)


def test_worst_uses_icinga_severity() -> None:
    assert worst([State.OK, State.WARNING, State.UNKNOWN]) is State.UNKNOWN
    assert worst([State.UNKNOWN, State.CRITICAL]) is State.CRITICAL
    assert worst([State.OK, State.WARNING]) is State.WARNING
    assert worst([]) is State.OK


# -- states --------------------------------------------------------------------

def test_all_ok() -> None:
    result = evaluate({f"web{i}": snap() for i in range(1, 13)}, WARN, CRIT)
    assert result.status == 0 and result.status is State.OK
    assert result.line().startswith("SHOAL OK - 12 hosts ok | ")


def test_warning() -> None:
    result = evaluate({"web1": snap(), "web2": snap(load1=6.0)}, WARN, CRIT)
    assert result.status == 1
    assert result.line().startswith("SHOAL WARNING - web2 load1 6 > 4 | ")


def test_critical_threshold_beats_warning_for_the_same_metric() -> None:
    result = evaluate({"web03": snap(disks={"/": 40.0, "/var": 97.0}), "web04": snap(cpu=90.0)}, WARN, CRIT)
    assert result.status == 2
    assert result.line().startswith("SHOAL CRITICAL - web03 disk 97% > 95; web04 cpu 90% > 80 | ")


def test_unreachable_host_is_critical_by_default() -> None:
    result = evaluate({"web01": snap(), "web07": "connection refused"}, WARN, CRIT)
    assert result.status == 2
    assert result.line().startswith("SHOAL CRITICAL - web07 unreachable (connection refused) | ")


def test_unreachable_host_can_be_unknown() -> None:
    result = evaluate({"web01": snap(cpu=85.0), "web07": "timed out"}, WARN, CRIT, unreachable_state=3)
    assert result.status == 3
    assert result.line().startswith("SHOAL UNKNOWN - web07 unreachable (timed out); web01 cpu 85% > 80")


def test_unknown_when_a_checked_metric_is_missing() -> None:
    blind = snap()
    blind["memory"] = None
    result = evaluate({"a": blind, "b": snap(cpu=81.0)}, WARN, CRIT)
    assert result.status == 3
    assert "a no mem data" in result.line()


def test_host_without_metrics_is_unknown() -> None:
    assert evaluate({"a": None}, WARN, CRIT).status == 3


def test_critical_outranks_unknown() -> None:
    result = evaluate({"a": None, "b": snap(cpu=99.0)}, WARN, CRIT, unreachable_state=3)
    assert result.status == 2
    assert result.details() == ["b: CRITICAL - cpu 99% > 95", "a: UNKNOWN - no metrics"]


def test_no_hosts_is_unknown() -> None:
    result = evaluate({}, WARN, CRIT)
    assert result.status == 3 and result.line() == "SHOAL UNKNOWN - no hosts"


def test_lower_bound_thresholds() -> None:
    result = evaluate({"a": snap(procs=2), "b": snap(procs=50)}, [], parse_thresholds("procs<5"))
    assert result.status == 2 and "a procs 2 < 5" in result.line()
    assert "'b_procs'=50;;5:;0" in result.line()


def test_bad_unreachable_state() -> None:
    with pytest.raises(ConfigError):
        evaluate({"a": snap()}, WARN, CRIT, unreachable_state=1)


# -- output --------------------------------------------------------------------

PERF_ITEM = re.compile(r"'(?:[^'=]|'')+'=-?[0-9.]+(%|[a-zA-Z]*)?(;[0-9.:]*){0,4}")


def perfdata(result: CheckResult) -> list[str]:
    line = result.line()
    assert line.count("|") == 1, line
    return line.split(" | ", 1)[1].split(" ")


def test_perfdata_follows_the_plugin_convention() -> None:
    result = evaluate({"web01": snap(cpu=12.5, load1=0.42)}, WARN, CRIT)
    items = perfdata(result)
    assert "'web01_cpu'=12.5%;80;95;0;100" in items
    assert "'web01_mem'=20%;95;;0;100" in items
    assert "'web01_load1'=0.42;4;;0" in items
    assert all(PERF_ITEM.fullmatch(item) for item in items), items


def test_text_that_would_break_the_status_line_is_cleaned() -> None:
    result = evaluate({"o'brien": snap(), "x": "refused | by\npeer"}, WARN, CRIT)
    assert "\n" not in result.line()
    assert "x unreachable (refused / by peer)" in result.line()
    assert "'o''brien_cpu'=10%;80;95;0;100" in perfdata(result)


def test_status_line_names_at_most_ten_problem_hosts() -> None:
    result = evaluate({f"n{i}": "down" for i in range(15)}, WARN, CRIT)
    assert "n9 unreachable (down); and 5 more | 'n0_cpu'=U;80;95;0;100 " in result.line()
    assert len(result.details()) == 15


def test_details_list_every_host_worst_first() -> None:
    result = evaluate({"ok2": snap(), "ok10": snap(), "warm": snap(cpu=85.0), "hot": snap(cpu=99.0, mem=96.0)},
                      WARN, CRIT)
    assert result.details() == [
        "hot: CRITICAL - cpu 99% > 95; mem 96% >= 95",
        "warm: WARNING - cpu 85% > 80",
        "ok2: OK - cpu 10%, mem 20%, disk 30%, load1 0.5",
        "ok10: OK - cpu 10%, mem 20%, disk 30%, load1 0.5",
    ]


def test_no_thresholds_means_no_perfdata() -> None:
    result = evaluate({"a": snap()}, [], [])
    assert result.line() == "SHOAL OK - 1 host ok"
    assert result.details() == ["a: OK"]


def test_real_snapshot_is_checkable() -> None:
    result = evaluate({"local": Sampler().snapshot()}, [], parse_thresholds("cpu>100,mem>100,disk>100,procs<1"))
    assert result.status is State.OK
    assert {item.split("=")[0] for item in perfdata(result)} == {
        "'local_cpu'", "'local_mem'", "'local_disk'", "'local_procs'"}


def test_a_metric_a_host_did_not_report_is_U_in_perfdata() -> None:
    blind = snap()
    blind["memory"] = None
    items = perfdata(evaluate({"a": blind, "b": "refused"}, WARN, CRIT))
    assert "'a_mem'=U;95;;0;100" in items and "'a_cpu'=10%;80;95;0;100" in items
    assert {i.split("=")[0] for i in items if i.startswith("'b_")} == {"'b_cpu'", "'b_mem'", "'b_disk'", "'b_load1'"}
    assert all(i.split("=")[1].startswith("U;") for i in items if i.startswith("'b_"))


def test_500_healthy_hosts_fit_the_first_line_and_carry_all_perfdata() -> None:
    result = evaluate({f"web{i:03}.example.net": snap() for i in range(500)}, WARN, CRIT)
    lines = result.output()
    assert len(lines[0].encode()) <= 8192 and lines[0].startswith("SHOAL OK - 500 hosts ok | ")
    assert lines[1:500] == result.details()[:499]
    last, _, rest = lines[500].partition(" | ")
    assert last == result.details()[499]
    items = lines[0].split(" | ", 1)[1].split() + [rest, *lines[501:]]
    assert items == list(result.perfdata) and len(items) == 500 * 4
    assert all(PERF_ITEM.fullmatch(item) for item in items)
