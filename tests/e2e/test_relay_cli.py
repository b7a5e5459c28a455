"""Every subcommand through a gateway, as a user types it: `--via`, or `via` in the inventory.

Each test starts a gateway (with an audit log) and two targets on loopback; the CLI
runs in-process (`shoal(...)`), except the shell, which wants a terminal
(tests.e2e.test_repl's).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agents import AgentThread, closed_port, shoal
from tests.e2e.test_repl import PROMPT, Terminal
from tests.rawpeer import audit_events


@pytest.fixture
def gateway_audit(tmp_path: Path) -> Path:
    return tmp_path / "gateway-audit.jsonl"


@pytest.fixture
def fleet(start_agents: Callable[..., AgentThread], gateway_audit: Path) -> tuple[str, list[str]]:
    """(the gateway's address, the two targets' addresses)."""
    gw, targets = start_agents(audit_log=str(gateway_audit)), start_agents(count=2)
    return gw.addresses[0], targets.addresses


def test_run_and_batch_through_a_gateway(capsysbinary: pytest.CaptureFixture[bytes], fleet: tuple[str, list[str]],
                                         tmp_path: Path) -> None:
    gw, (t1, t2) = fleet
    status, out, err = shoal(capsysbinary, "run", f"{t1},{t2}", "-n", "--via", gw, "-o", "gather", "--", "echo relayed")
    assert status == 0 and b"relayed" in out and b"(2)" in out, err
    steps = tmp_path / "steps.txt"
    steps.write_text("echo one\necho two\n")
    status, out, _ = shoal(capsysbinary, "batch", t1, str(steps), "--via", gw, "-o", "json")
    data = [json.loads(line)["data"] for line in out.splitlines() if json.loads(line)["event"] == "output"]
    assert status == 0 and data == ["one\n", "two\n"]


def test_put_and_get_through_a_gateway(capsysbinary: pytest.CaptureFixture[bytes], fleet: tuple[str, list[str]],
                                       tmp_path: Path) -> None:
    gw, (t1, t2) = fleet
    payload = bytes(range(256)) * 4096  # 1 MiB: many windows of the relay
    (tmp_path / "src").write_bytes(payload)
    status, _, err = shoal(capsysbinary, "put", f"{t1},{t2}", str(tmp_path / "src"), str(tmp_path / "copy"),
                           "--via", gw)
    assert status == 0, err
    assert (tmp_path / "copy").read_bytes() == payload
    status, _, _ = shoal(capsysbinary, "get", t1, str(tmp_path / "copy"), str(tmp_path / "back"), "--via", gw)
    fetched = list((tmp_path / "back").rglob("copy"))
    assert status == 0 and [f.read_bytes() == payload for f in fetched] == [True]


def test_ping_metrics_top_and_check_through_a_gateway(capsysbinary: pytest.CaptureFixture[bytes],
                                                      fleet: tuple[str, list[str]]) -> None:
    gw, (t1, t2) = fleet
    status, out, _ = shoal(capsysbinary, "ping", f"{t1},{t2}", "--via", gw, "-c", "2", "--json")
    assert status == 0 and [json.loads(line)["ok"] for line in out.splitlines()] == [True, True]
    status, out, _ = shoal(capsysbinary, "metrics", f"{t1},{t2}", "--via", gw, "--json")
    assert status == 0 and all(json.loads(line)["ok"] for line in out.splitlines())
    status, out, _ = shoal(capsysbinary, "top", f"{t1},{t2}", "--via", gw, "-n", "1")
    assert status == 0 and t1.encode() in out and t2.encode() in out
    status, out, _ = shoal(capsysbinary, "check", f"{t1},{t2}", "--via", gw, "--crit", "cpu>1000")
    assert status == 0 and out.startswith(b"SHOAL OK")


def test_jobs_attach_and_kill_through_a_gateway(capsysbinary: pytest.CaptureFixture[bytes],
                                                fleet: tuple[str, list[str]]) -> None:
    gw, (t1, _) = fleet
    status, out, _ = shoal(capsysbinary, "run", t1, "-n", "--via", gw, "--detach", "-o", "json", "--", "sleep 30")
    job = next(json.loads(line)["job"] for line in out.splitlines() if json.loads(line)["event"] == "job")
    status, out, _ = shoal(capsysbinary, "jobs", t1, "--via", gw, "--json")
    assert status == 0 and [json.loads(line)["job"] for line in out.splitlines()] == [job]
    status, _, _ = shoal(capsysbinary, "kill", t1, job, "--via", gw, "--signal", "KILL")
    assert status == 0
    status, _, err = shoal(capsysbinary, "attach", t1, job, "--via", gw)
    assert status == 128 + 9, err


def test_the_shell_runs_lines_through_a_gateway(fleet: tuple[str, list[str]]) -> None:
    gw, (t1, t2) = fleet
    term = Terminal("shell", f"{t1},{t2}", "--via", gw)
    try:
        term.expect(PROMPT)
        shown = term.line("echo via-shell")
        assert shown.count(b"via-shell\r\n") >= 2
        term.send("\x04")
        assert term.finish() == 0
    finally:
        term.close()


def test_the_inventory_names_the_gateway_per_group(capsysbinary: pytest.CaptureFixture[bytes],
                                                   fleet: tuple[str, list[str]], tmp_path: Path) -> None:
    gw, (t1, _) = fleet
    port = t1.rpartition(":")[2]
    inventory = tmp_path / "inventory.toml"  # settings are looked up by name: `localhost`
    inventory.write_text(f'[defaults]\nvia = "{gw}"\n\n[groups.dmz]\nhosts = ["localhost"]\n')
    target = f"localhost:{port}"
    status, out, _ = shoal(capsysbinary, "hosts", f"{target},{gw}", "--inventory", str(inventory), "--json")
    assert status == 0 and [json.loads(line)["via"] for line in out.splitlines()] == [[gw], []]
    status, out, _ = shoal(capsysbinary, "run", target, "-n", "--inventory", str(inventory), "--", "echo inv")
    assert (status, out) == (0, b"inv\n")
    status, _, _ = shoal(capsysbinary, "run", target, "-n", "--inventory", str(inventory), "--via", "", "--", "true")
    assert status == 0  # --via '' reaches it directly (it is on loopback)


def test_an_unreachable_gateway_is_named_for_each_host(capsysbinary: pytest.CaptureFixture[bytes],
                                                       fleet: tuple[str, list[str]]) -> None:
    _, (t1, t2) = fleet
    dead = f"127.0.0.1:{closed_port()}"
    status, _, err = shoal(capsysbinary, "run", f"{t1},{t2}", "-n", "--via", dead, "--", "true")
    assert status == 255
    for host in (t1, t2):
        assert f"shoal: {host}: unreachable: via {dead}: connection refused".encode() in err


def test_a_bad_via_is_one_line_and_status_2(capsysbinary: pytest.CaptureFixture[bytes],
                                            fleet: tuple[str, list[str]]) -> None:
    _, (t1, _) = fleet
    status, out, err = shoal(capsysbinary, "run", t1, "-n", "--via", "gw[1-3]", "--", "true")
    assert (status, out) == (2, b"")
    assert err == b"shoal: via: bad gateway 'gw[1-3]' in 'gw[1-3]': a gateway is one host, not a group, block or range\n"


def test_a_run_costs_one_connection_to_the_gateway(capsysbinary: pytest.CaptureFixture[bytes],
                                                   fleet: tuple[str, list[str]], gateway_audit: Path) -> None:
    gw, targets = fleet
    before = [len(audit_events(gateway_audit, event=e)) for e in ("authenticated", "relay")]
    status, _, _ = shoal(capsysbinary, "run", ",".join(targets), "-n", "--via", gw, "--", "true")
    after = [len(audit_events(gateway_audit, event=e)) for e in ("authenticated", "relay")]
    assert status == 0 and [b - a for a, b in zip(before, after)] == [1, len(targets)]
