"""What ends a job besides its own exit (issue 16 point 7, point 4 of the fleet-jobs work):
its --timeout, its --idle-timeout, and the revocation of the key that started it.

Real agents on loopback and the real `shoal` CLI; "the tree is gone" is read from
the process table (pids the job wrote down, or its request marker: tests/debris.py).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from shoal.hostio.keyfile import write_key_file
from tests.agents import AgentThread, shoal
from tests.debris import marked, marker_of
from tests.waiting import wait_for
from tests.e2e.test_jobs import ENTRY, finished, listed, start_job
from tests.e2e.test_lifecycle import AgentProcess
from tests.rawpeer import audit_events

# Writes the pids of a tree of three (a background child, a setsid daemon, itself)
# to PIDS, prints one line, then is silent for good.
SILENT_TREE = ("sleep 300 & echo $! >> {pids}; setsid sleep 300 & echo $! >> {pids}; "
               "echo $$ >> {pids}; echo started; exec sleep 300")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def detach(capsysbinary: pytest.CaptureFixture[bytes], host: str, *args: str) -> str:
    status, out, err = shoal(capsysbinary, "run", host, "--detach", *args)
    assert status == 0 and err == b"", err
    return out.decode().rpartition(": job ")[2].strip()


def jobs_json(capsysbinary: pytest.CaptureFixture[bytes], host: str) -> dict[str, dict[str, object]]:
    status, out, err = shoal(capsysbinary, "jobs", host, "--json")
    assert status == 0, err
    return {row["job"]: row for row in map(json.loads, out.splitlines())}


def test_a_jobs_timeouts_end_its_silent_tree_and_leave_a_chatty_one(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    idle_pids, timed_pids = tmp_path / "idle", tmp_path / "timed"
    with AgentThread() as agents:
        [host] = agents.addresses
        idle = detach(capsysbinary, host, "--idle-timeout", "0.5", "--kill-grace", "1", "--",
                      SILENT_TREE.format(pids=idle_pids))
        timed = detach(capsysbinary, host, "--timeout", "0.5", "--kill-grace", "1", "--",
                       SILENT_TREE.format(pids=timed_pids))
        # a line every 0.2 s for 2 s: longer than its idle timeout, never silent for it
        chatty = detach(capsysbinary, host, "--idle-timeout", "1.5", "--",
                        "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done")
        def all_ended() -> dict[str, dict[str, object]] | None:
            rows = jobs_json(capsysbinary, host)
            return rows if all(rows[j]["outcome"] is not None for j in (idle, timed, chatty)) else None

        rows = wait_for(all_ended, timeout=20)
        assert isinstance(rows, dict)
        assert [rows[j]["outcome"] for j in (idle, timed, chatty)] == ["idle_timeout", "timed_out", "ok"]
        assert [rows[j]["state"] for j in (idle, timed, chatty)] == ["killed", "killed", "exited"]
        for pids in (idle_pids, timed_pids):  # the whole tree, the setsid daemon too
            started = [int(p) for p in pids.read_text().split()]
            assert len(started) == 3
            wait_for(lambda: all(gone(pid) for pid in started), timeout=10)
        # attach replays the job and reports the outcome, in the words of the one vocabulary
        status, out, err = shoal(capsysbinary, "attach", host, idle)
        assert (status, out, err) == (255, b"started\n", f"shoal: {host}: idle_timeout\n".encode())
        status, out, err = shoal(capsysbinary, "attach", host, timed)
        assert (status, out, err) == (255, b"started\n", f"shoal: {host}: timed_out\n".encode())
        status, out, _ = shoal(capsysbinary, "attach", host, chatty, "-o", "json")
        exit_ = [e for e in map(json.loads, out.splitlines()) if e["event"] == "exit"]
        assert status == 0 and [(e["outcome"], e["status"]) for e in exit_] == [("ok", 0)]
        # the table shows the outcome where a running job shows `running`
        status, table, _ = shoal(capsysbinary, "jobs", host)
        states = {line.split()[1]: line.split()[2] for line in table.decode().splitlines()[1:]}
        assert states == {idle: "idle_timeout", timed: "timed_out", chatty: "ok"}


def test_a_revoked_keys_running_job_is_killed_whole_and_audited(tmp_path: Path) -> None:
    for name in ("admin", "drop"):
        write_key_file(tmp_path / f"{name}.key")
    conf, audit = tmp_path / "agent.toml", tmp_path / "audit.jsonl"
    admin, drop = tmp_path / "admin.key", tmp_path / "drop.key"
    conf.write_text(ENTRY.format("admin", admin, 'allow = "all"') + ENTRY.format("drop", drop, 'allow = "all"'))
    agent = AgentProcess(tmp_path, "--config", str(conf), "--listen", "127.0.0.1:0", "--audit-log", str(audit),
                         "--log-level", "info")
    try:
        spec = f"127.0.0.1:{agent.target().port}"
        doomed = start_job(drop, spec, "sleep 3600 & sleep 3600 & wait")
        kept = start_job(admin, spec, "sleep 3600")
        rows = listed(admin, spec)
        doomed_tree, kept_tree = (marker_of(int(str(rows[j]["pid"]))) for j in (doomed, kept))
        wait_for(lambda: len(marked(doomed_tree)) == 3, timeout=10)
        conf.write_text(ENTRY.format("admin", admin, 'allow = "all"'))
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not marked(doomed_tree), timeout=15)
        assert marked(kept_tree)  # another key's job carries on
        outcome = wait_for(lambda: listed(admin, spec)[doomed]["outcome"], timeout=10)
        assert outcome == "cancelled" and listed(admin, spec)[doomed]["state"] == "killed"
        status, out, err = finished("attach", "--key-file", str(admin), spec, doomed)
        assert (status, err) == (128 + signal.SIGTERM, f"shoal: {spec}: cancelled\n".encode())
        [revoked] = audit_events(audit, event="job_revoked")
        assert (revoked["job"], revoked["processes"], revoked["argv"][-1]) == (doomed, 3, "sleep 3600 & sleep 3600 & wait")
        finished("kill", "--key-file", str(admin), spec, kept)
        wait_for(lambda: not marked(kept_tree), timeout=10)
    finally:
        agent.stop()
