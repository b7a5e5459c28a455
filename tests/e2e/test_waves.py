"""Rolling runs end to end: --serial waves, the --max-fail budget, --canary, and the
`skipped` outcome in the summary, JSON and --failed-only, over real loopback agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoal.controller.waves import Count, RollingRun, WavePolicy, parse_count, skipped_result
from shoal.controller.result import Result
from shoal.protocol.errors import ConfigError
from tests.agents import AgentThread, closed_port, shoal


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 6}


def _events(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def _fail_on(node: int, status: int = 7) -> str:
    return f'test "$SHOAL_NODENUM" != {node} || exit {status}'


def test_failure_in_wave_two_with_no_budget_skips_wave_three(agents: AgentThread,
                                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    hosts = agents.addresses
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "-o", "json",
                             "--serial", "2", "--max-fail", "0", "--", _fail_on(2))
    events = _events(out)
    assert status == 7  # the largest status among the hosts that ran
    waves = [e for e in events if e["event"] == "wave"]
    assert [(w["wave"], w["waves"], w["hosts"]) for w in waves] == [(1, 3, hosts[:2]), (2, 3, hosts[2:4])]
    started = [e["host"] for e in events if e["event"] == "start"]
    assert sorted(started) == sorted(hosts[:4])
    exits = {e["host"]: e for e in events if e["event"] == "exit"}
    assert [exits[h]["outcome"] for h in hosts] == ["ok", "ok", "failed", "ok", "skipped", "skipped"]
    assert (exits[hosts[4]]["status"], exits[hosts[4]]["ok"], exits[hosts[4]]["unreachable"]) == (1, False, False)
    # a wave starts only after the previous one has ended
    order = [(e["event"], e.get("host"), e.get("wave")) for e in events]
    assert order.index(("wave", None, 2)) > max(order.index(("exit", h, None)) for h in hosts[:2])
    summary = events[-1]
    assert summary["event"] == "summary" and sorted(summary["skipped"]) == sorted(hosts[4:]) and summary["failed"] == [hosts[2]]


def test_summary_line_and_failed_only_list_skipped_hosts(agents: AgentThread,
                                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    hosts = agents.addresses
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "--failed-only",
                             "--serial", "3", "--max-fail", "0", "--", _fail_on(0, 3))
    assert status == 3
    assert sorted(out.decode().splitlines()) == sorted([f"{hosts[0]}: failed (code 3)"] + [f"{h}: skipped" for h in hosts[3:]])
    assert ", 3 skipped (" in err.decode().splitlines()[-1]


def test_budget_not_exceeded_runs_everything(agents: AgentThread,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "-o", "json",
                             "--serial", "1", "--max-fail", "1", "--", _fail_on(1))
    exits = [e for e in _events(out) if e["event"] == "exit"]
    assert status == 7 and len(exits) == 6 and sum(e["outcome"] == "skipped" for e in exits) == 0


def test_failing_canary_runs_nothing_else(agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    hosts = agents.addresses
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "-o", "json",
                             "--canary", "1", "--", _fail_on(0))
    events = _events(out)
    assert status == 7
    assert [e["host"] for e in events if e["event"] == "start"] == [hosts[0]]
    assert [(w["wave"], w["waves"]) for w in events if w["event"] == "wave"] == [(1, 2)]
    assert [e["outcome"] for e in events if e["event"] == "exit"] == ["failed"] + ["skipped"] * 5


def test_passing_canary_lets_the_rest_run(agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "-o", "json",
                             "--canary", "2", "--", "true")
    events = _events(out)
    assert status == 0 and sum(e["event"] == "start" for e in events) == 6
    assert [w["hosts"] for w in events if w["event"] == "wave"] == [agents.addresses[:2], agents.addresses[2:]]


@pytest.mark.parametrize(("serial", "total", "sizes"), [
    (Count(30, True), 10, [3, 3, 3, 1]),    # 30% of 10: 3
    (Count(25, True), 10, [2, 2, 2, 2, 2]),  # 2.5 rounds down to 2
    (Count(5, True), 10, [1] * 10),          # 0.5 rounds down to 0, then at least 1
    (Count(4), 10, [4, 4, 2]),
])
def test_serial_percentages_round_down_to_at_least_one(serial: Count, total: int, sizes: list[int]) -> None:
    assert [len(w) for w in WavePolicy(serial=serial).waves(list(range(total)))] == sizes


def test_max_fail_percentage_rounds_down() -> None:
    run = RollingRun(WavePolicy(max_fail=Count(10, True)), 25)  # 2.5 -> 2 hosts may fail
    failed = Result("h", 1)
    run.record(failed)
    run.record(failed)
    assert not run.stopped
    run.record(skipped_result("s"))  # skipped hosts do not spend the budget
    assert not run.stopped
    run.record(failed)
    assert run.stopped


@pytest.mark.parametrize("text", ["x", "-1", "150%", "1.5", "%"])
def test_bad_counts_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_count(text, "--serial")


def test_bad_serial_is_usage_error_not_traceback(agents: AgentThread,
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "--serial", "0", "--", "true")
    assert status == 2 and b"--serial" in err and b"Traceback" not in err


def test_batch_rolls_in_waves_and_skips_after_the_budget(agents: AgentThread, tmp_path: Any,
                                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    hosts = agents.addresses
    batch = tmp_path / "cmds"
    batch.write_text(f"{_fail_on(3, 5)}\necho second\n")
    status, out, err = shoal(capsysbinary, "batch", agents.targets_spec(), str(batch), "-o", "json",
                             "--serial", "2", "--max-fail", "0")
    events = _events(out)
    assert status == 5
    assert [(w["wave"], w["waves"]) for w in events if w["event"] == "wave"] == [(1, 3), (2, 3)]
    assert sorted({e["host"] for e in events if e["event"] == "start"}) == sorted(hosts[:4])
    skipped = [e["host"] for e in events if e["event"] == "exit" and e["outcome"] == "skipped"]
    assert sorted(skipped) == sorted(hosts[4:])
    table = err.decode().splitlines()
    assert table[0].split() == ["#", "COMMAND", "OK", "FAILED", "SKIPPED"]
    first, second = (row.split() for row in table[1:3])
    assert (first[0], first[-2]) == ("1", "2") and (second[0], second[-2]) == ("2", "3")  # skipped counts


def test_batch_stopped_with_all_that_ran_ok_would_exit_one() -> None:
    from shoal.controller.batch import BatchLine, BatchReport

    report = BatchReport([BatchLine("true", 1)], {"a": [Result("a", 0)], "b": [None]}, skipped=["b"])
    assert report.status == 1


def test_put_with_a_failing_canary_copies_nowhere(agents: AgentThread, tmp_path: Path,
                                                   capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "app.conf").write_bytes(b"x\n")
    closed = f"127.0.0.1:{closed_port()}"
    spec = ",".join([closed, *agents.addresses[:3]])
    status, out, err = shoal(capsysbinary, "put", spec, "--canary", "1", str(tmp_path / "app.conf"),
                             str(tmp_path / "deployed.conf"))
    assert status == 255 and not (tmp_path / "deployed.conf").exists()
    lines = err.decode().splitlines()
    assert sorted(line for line in lines if line.endswith(": skipped")) == sorted(
        f"shoal: {h}: skipped" for h in agents.addresses[:3])
    assert ", 3 skipped (" in lines[-1]


def test_put_budget_skips_later_waves(agents: AgentThread, tmp_path: Path,
                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "app.conf").write_bytes(b"x\n")
    closed = f"127.0.0.1:{closed_port()}"
    hosts = agents.addresses
    spec = ",".join([hosts[0], closed, hosts[1], hosts[2]])
    status, out, err = shoal(capsysbinary, "put", spec, "--serial", "1", "--max-fail", "0",
                             str(tmp_path / "app.conf"), str(tmp_path / "deployed.conf"))
    assert status == 255 and (tmp_path / "deployed.conf").read_bytes() == b"x\n"  # wave 1 ran
    assert err.decode().splitlines()[-1].startswith("shoal: 1 ok, 0 failed, 1 unreachable")
    assert ", 2 skipped (" in err.decode().splitlines()[-1]


def test_json_outcomes_name_what_happened(agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    hosts = agents.addresses
    cases = {hosts[0]: "exit 0", hosts[1]: "exit 3", hosts[2]: "kill -9 $$", hosts[3]: "exec sleep 60"}
    command = " ; ".join(f'if [ "$SHOAL_HOST" = "{h}" ]; then {c}; fi' for h, c in cases.items())
    spec = ",".join([*cases, closed])
    status, out, err = shoal(capsysbinary, "run", spec, "-n", "-o", "json", "--timeout", "1", "--", command)
    exits = {e["host"]: e for e in _events(out) if e["event"] == "exit"}
    assert {h: e["outcome"] for h, e in exits.items()} == {
        hosts[0]: "ok", hosts[1]: "failed", hosts[2]: "signal", hosts[3]: "timed_out", closed: "unreachable"}
    assert (exits[hosts[2]]["status"], exits[hosts[2]]["signal"]) == (137, 9)


def test_library_outcomes_cover_the_refusals() -> None:
    from shoal.controller.outcome import HOST_OUTCOMES, Outcome

    assert Result("h", 1, error="denied", error_code="permission_denied").outcome == Outcome.DENIED
    assert Result("h", 255, error_code=Outcome.AUTH_FAILED).outcome == "auth_failed"
    assert Result("h", 255, error_code=Outcome.CONNECTION_LOST).outcome == "lost"
    assert Result("h", 255, error_code=Outcome.CONNECT_TIMEOUT).outcome == "unreachable"
    assert Result("h", 130, signal=2, cancelled=True).outcome == "cancelled"
    assert skipped_result("h").outcome == "skipped"
    assert {str(o) for o in HOST_OUTCOMES} == {"ok", "failed", "signal", "timed_out", "idle_timeout", "cancelled",
                                                "unreachable", "auth_failed", "denied", "lost", "skipped"}


def test_canary_comes_before_the_serial_waves() -> None:
    policy = WavePolicy(serial=Count(2), canary=1)
    assert policy.waves(list("abcdef")) == [["a"], ["b", "c"], ["d", "e"], ["f"]]


def test_serial_wait_pauses_between_waves_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from shoal.controller import waves

    pauses: list[float] = []

    async def recorded(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(waves.asyncio, "sleep", recorded)
    seen: list[tuple[int, int]] = []

    async def work(host: str) -> Result:
        return Result(host, 0)

    results = asyncio.run(waves.run_in_waves(list("abcde"), work, lambda h: h,
                                             policy=WavePolicy(serial=Count(2), wait=7.5), limit=8,
                                             on_done=lambda r: None,
                                             on_wave=lambda n, count, items: seen.append((n, count))))
    assert pauses == [7.5, 7.5] and seen == [(1, 3), (2, 3), (3, 3)] and all(r.ok for r in results)


def test_progress_line_names_the_wave_and_does_not_count_skipped_as_failed() -> None:
    import asyncio
    import io

    from shoal.controller.term.display import Display
    from shoal.controller.term.output import FailedOnlyHandler
    from shoal.controller.term.progress import ProgressHandler
    from shoal.controller.term.waveview import wave_reporter

    async def drive() -> str:
        display = Display(io.BytesIO(), io.BytesIO())
        progress = ProgressHandler(FailedOnlyHandler(display), display, 4)
        wave_reporter(display, progress)(2, 3, ["c", "d"])
        progress.on_result(Result("a", 3))
        progress.on_result(skipped_result("b"))
        text = progress.text()
        progress.close()
        return text

    assert asyncio.run(drive()).startswith("shoal: wave 2/3, 2/4 done, 0 running, 1 failed, ")


def test_cancel_starts_no_later_wave(agents: AgentThread) -> None:
    import asyncio

    from shoal.controller.remote import Command
    from shoal.controller.fleet import Fleet
    from shoal.controller.targets import parse_targets

    fleet = Fleet(parse_targets(",".join(agents.addresses[:3])))
    started: list[str] = []

    class CancelAfterFirst:
        def on_start(self, host: str) -> None:
            started.append(host)

        def on_output(self, host: str, stream: str, data: bytes) -> None:
            pass

        def on_result(self, result: Result) -> None:
            fleet.cancel()  # as the first Ctrl-C does

    out = asyncio.run(fleet.run(Command(shell="true"), CancelAfterFirst(), policy=WavePolicy(serial=Count(1))))
    by = out.by_host()
    assert started == agents.addresses[:1]
    assert [by[h].outcome for h in agents.addresses[:3]] == ["ok", "cancelled", "cancelled"]
