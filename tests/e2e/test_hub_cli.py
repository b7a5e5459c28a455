"""Every subcommand through the hub, against the same expectations as direct.

The agents here both listen and dial in, so one test reaches the same agent
directly (by address) and through the hub (by name) and compares what a user
sees: exit status, output, files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.agents import shoal
from tests.debris import marked, tokens_of
from tests.waiting import wait_for
from tests.hubs import HubThread, new_key
from tests.programs import SHOAL

NAMES = ["web1", "web2"]


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    key, key_file = new_key(tmp_path)
    with HubThread(tmp_path, NAMES, key, agent_overrides={"listen": ("127.0.0.1:0",)}) as t:
        direct = ",".join(a.addresses[0] for a in t.agents)
        yield t, key_file, direct


def _normal(text: bytes) -> bytes:
    """Output with host names, addresses and folded sets of either written HOST, and times T,
    so a direct run and one through the hub compare."""
    text = re.sub(rb"(127\.0\.0\.1:|web)[\[\]\d,-]+", b"HOST", text)
    text = re.sub(rb"in \d+\.\d+s", b"in Ts", text)
    return re.sub(rb"[ \t]+", b" ", text)  # tables align on the longest host name


@pytest.mark.parametrize("argv", [
    ["run", "-o", "gather", "--", "echo hello; exit 4"],
    ["run", "-o", "json", "--", "printf out; printf err >&2"],
    ["batch", "-o", "gather", "-"],
])
def test_run_and_batch_match_direct(capsysbinary, fleet, argv: list[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    t, key_file, direct = fleet
    sub, *rest = argv
    if sub == "batch":
        import io
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"echo one\nuname -s\n")))
    code_d, out_d, err_d = shoal(capsysbinary, sub, direct, "--key-file", str(key_file), *rest)
    if sub == "batch":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"echo one\nuname -s\n")))
    code_h, out_h, err_h = shoal(capsysbinary, sub, ",".join(NAMES), "--hub", str(t.socket), *rest)
    assert code_h == code_d
    if "json" in rest:
        strip = lambda out: sorted(  # noqa: E731
            (e["event"], e.get("host"), e.get("data"), e.get("status")) for e in map(json.loads, out.splitlines()))
        assert strip(_normal(out_h)) == strip(_normal(out_d))
    else:
        assert _normal(out_h) == _normal(out_d)
        assert _normal(err_h) == _normal(err_d)


def test_ping_metrics_check_and_jobs_match_direct(capsysbinary, fleet) -> None:  # type: ignore[no-untyped-def]
    t, key_file, direct = fleet
    hub = ["--hub", str(t.socket)]
    for argv in (["ping", "--json"], ["metrics", "--json"], ["check", "--warn", "cpu>1000"], ["jobs"]):
        code_d, out_d, _ = shoal(capsysbinary, argv[0], direct, "--key-file", str(key_file), *argv[1:])
        code_h, out_h, _ = shoal(capsysbinary, argv[0], ",".join(NAMES), *hub, *argv[1:])
        assert code_h == code_d == 0, (argv, out_h)
        if "--json" in argv:
            hosts = sorted(json.loads(line)["host"] for line in out_h.splitlines())
            assert hosts == NAMES
            assert all(json.loads(line)["ok"] for line in out_h.splitlines())


def test_put_and_get_through_the_hub(capsysbinary, fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t, _, _ = fleet
    src = tmp_path / "app.conf"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    dest = tmp_path / "remote"
    dest.mkdir()
    hub = ["--hub", str(t.socket)]
    code, _, err = shoal(capsysbinary, "put", "web1", *hub, str(src), str(dest / "app.conf"))
    assert code == 0, err
    assert (dest / "app.conf").read_bytes() == src.read_bytes()
    code, _, err = shoal(capsysbinary, "get", "web1,web2", *hub, str(dest / "app.conf"), str(tmp_path / "got"))
    assert code == 0, err
    for name in NAMES:
        assert (tmp_path / "got" / name / "app.conf").read_bytes() == src.read_bytes()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    code, _, err = shoal(capsysbinary, "put", "web2", *hub, "-r", f"{tree}/", str(tmp_path / "copy"))
    assert code == 0, err
    assert (tmp_path / "copy" / "sub" / "f").read_text() == "x"


def test_hosts_lists_the_hubs_agents(capsysbinary, fleet) -> None:  # type: ignore[no-untyped-def]
    t, _, _ = fleet
    code, out, _ = shoal(capsysbinary, "hosts", "--hub", str(t.socket), "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [h["name"] for h in listed] == NAMES
    assert all(h["version"].startswith("shoal-agent/") and h["kind"] == "dialin" for h in listed)
    code, out, _ = shoal(capsysbinary, "hosts", "--hub", str(t.socket), "web[2-9]", "--count")
    assert (code, out) == (0, b"1\n")
    # a pattern no connected agent matches: 1, as grep finding nothing, and one line saying so
    assert shoal(capsysbinary, "hosts", "--hub", str(t.socket), "db[1-3]") == (
        1, b"", b"shoal: no agent connected to the hub matches db[1-3]\n")


def test_a_hub_that_is_not_running_is_one_line(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = shoal(capsysbinary, "run", "web[1-50]", "--hub", str(tmp_path / "nohub.sock"), "--", "true")
    assert code == 255 and out == b""
    assert err.count(b"\n") == 1 and b"not running" in err, err


def test_the_config_files_hub_is_used(capsysbinary, fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t, _, _ = fleet
    config = tmp_path / "config.toml"
    config.write_text(f'hub = "{t.socket}"\n')
    code, out, _ = shoal(capsysbinary, "run", "web1", "-n", "--config", str(config), "--", "echo via-config")
    assert (code, out) == (0, b"via-config\n")


# A command whose tree outlives a plain SIGTERM: the shell, and a child that ignores it.
STUBBORN = "sh -c 'trap \"\" TERM; exec sleep 300' & echo up; wait"


def test_a_client_killed_mid_run_leaves_no_process_on_the_agents(fleet) -> None:  # type: ignore[no-untyped-def]
    t, _, _ = fleet
    _kill_mid_command(t, ["run", "web1,web2", "--hub", str(t.socket), "--", STUBBORN], b"", running=2)


def test_a_client_killed_mid_batch_leaves_no_process_on_the_agents(fleet) -> None:  # type: ignore[no-untyped-def]
    t, _, _ = fleet
    _kill_mid_command(t, ["batch", "web1,web2", "--hub", str(t.socket), "-"],
                      f"echo first\n{STUBBORN}\necho never\n".encode(), running=2)


def test_a_client_killed_mid_relay_leaves_no_process_on_the_agents(fleet) -> None:  # type: ignore[no-untyped-def]
    t, key_file, direct = fleet
    target = direct.split(",")[1]  # web2, by its own address, reached from web1 through the hub
    _kill_mid_command(t, ["run", target, "--hub", str(t.socket), "--via", "web1", "--key-file", str(key_file),
                          "--", STUBBORN], b"", running=1)
    # web2 is left with its own connection to the hub: the relayed one ended with the client
    wait_for(lambda: t.call(lambda: len(t.agents[1].sessions)) == 1, timeout=10, what="the relayed session closed")


def _kill_mid_command(t: HubThread, argv: list[str], stdin: bytes, running: int) -> None:
    """Start `shoal ARGV`, SIGKILL it once `running` commands run on the agents, and see every
    process of theirs gone (waited for on the process table) and nothing left open on the hub."""
    cli = subprocess.Popen([*SHOAL, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, start_new_session=True,
                           cwd=str(Path(__file__).resolve().parents[2]))
    cli.stdin.write(stdin)  # type: ignore[union-attr]
    cli.stdin.close()  # type: ignore[union-attr]
    out = bytearray()
    reader = threading.Thread(target=lambda: out.extend(cli.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        # The stubborn commands: the shell and the TERM-ignorer up (a batch's earlier step may still be listed).
        tokens = wait_for(lambda: (ts := [tok for a in t.agents for tok in t.call(tokens_of, a)
                                          if len(marked(tok)) >= 2]) and len(ts) == running and ts,
                          timeout=20, what=f"{running} commands running")
        assert isinstance(tokens, list)
        cli.send_signal(signal.SIGKILL)
        wait_for(lambda: not any(marked(tok) for tok in tokens), timeout=10, what="the commands' processes gone")
        wait_for(lambda: all(a.running.count == 0 for a in t.agents), timeout=10)
        assert t.hub is not None
        wait_for(lambda: t.call(lambda: t.hub._open_requests) == 0, timeout=10,  # type: ignore[union-attr]
                 what="the hub's requests closed")
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.wait(10)
        reader.join(5)
        cli.stdout.close()  # type: ignore[union-attr]


def test_put_r_through_the_hub_goes_in_batches(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from shoal.controller.putbatch import BATCH_FILES
    from tests.e2e.test_putbatch import make_many
    from tests.e2e.test_treesync import tree_of
    from tests.rawpeer import audit_events

    site = make_many(tmp_path, 300)
    audit, dest = tmp_path / "audit.jsonl", tmp_path / "www"
    key, _ = new_key(tmp_path)
    overrides = {"audit_log": str(audit), "state_dir": str(tmp_path / "state")}
    with HubThread(tmp_path, ["web1"], key, agent_overrides=overrides) as t:
        hub = ["--hub", str(t.socket)]
        status, _, err = shoal(capsysbinary, "put", "web1", *hub, "-r", "-p", f"{site}/", str(dest))
        assert status == 0 and b"web1: 301 sent, 0 skipped" in err, err
        status, _, err = shoal(capsysbinary, "put", "web1", *hub, "-r", "-p", f"{site}/", str(dest))
        assert status == 0 and b"web1: 0 sent, 301 skipped, 0 B\n" in err, err
    assert tree_of(dest) == tree_of(site)
    batches = audit_events(audit, event="put_batch")
    entries = 300 + len([p for p in site.rglob("*") if p.is_dir()])
    assert len(batches) == -(-entries // BATCH_FILES) and sum(b["files"] for b in batches) == entries
    assert [e["path"] for e in audit_events(audit, event="put")] == [str(dest / "big.bin")]  # the one sent alone


@pytest.mark.skipif(os.geteuid() != 0, reason="making a user and acting as it needs root")
def test_put_r_and_get_r_as_a_user_through_the_hub(capsysbinary, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pwd

    from tests.e2e.test_runas_e2e import _make_user, temp_dir
    from tests.e2e.test_treesync import make_site, tree_of
    from tests.rawpeer import audit_events

    site = make_site(tmp_path)
    audit = tmp_path / "audit.jsonl"
    key, _ = new_key(tmp_path)
    for user in _make_user():
        for public in temp_dir(0o755):
            shared = public / "shared"
            shared.mkdir()
            shared.chmod(0o1777)
            with HubThread(tmp_path, ["web1"], key, agent_overrides={"audit_log": str(audit)}) as t:
                hub = ["--hub", str(t.socket)]
                status, _, err = shoal(capsysbinary, "put", "web1", *hub, "-r", "-u", user.name, f"{site}/",
                                       str(shared / "www"))
                assert status == 0, err
                status, _, err = shoal(capsysbinary, "get", "web1", *hub, "-r", "-u", user.name,
                                       str(shared / "www"), str(tmp_path / "back"))
                assert status == 0, err
            entry = pwd.getpwnam(user.name)
            assert {(p.lstat().st_uid, p.lstat().st_gid) for p in (shared / "www").rglob("*")} == {
                (entry.pw_uid, entry.pw_gid)}
            assert tree_of(shared / "www") == tree_of(site)
            assert len(list((tmp_path / "back").rglob("*"))) > 0
    assert {e.get("user") for e in audit_events(audit, event="list")} == {user.name}


def test_via_through_the_hub_reaches_a_target_behind_a_gateway(capsysbinary, fleet) -> None:  # type: ignore[no-untyped-def]
    t, key_file, direct = fleet
    target = direct.split(",")[1]  # web2, by its own address, reached from web1
    status, out, err = shoal(capsysbinary, "run", target, "-n", "--hub", str(t.socket), "--via", "web1",
                             "--key-file", str(key_file), "--", "echo relayed; echo $SHOAL_HOST")
    assert (status, out) == (0, f"relayed\n{target}\n".encode()), err
    status, out, err = shoal(capsysbinary, "run", target, "-n", "--hub", str(t.socket), "--via", "nosuch",
                             "--key-file", str(key_file), "--", "true")
    assert status == 255 and b"via nosuch" in err, err
