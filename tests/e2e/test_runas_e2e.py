"""Commands run as the right user (issue 17, points 1, 2 and 6).

Real agents on loopback run by this (root) test process, the real `shoal run`
in-process, and a user and group made by `useradd`/`groupadd` for the test and
removed after it. What the command was run as is read from the command itself
(`id`, its environment, `pwd`); "nothing ran" is checked on the file system.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.agent import runas
from shoal.agent.config import KeyPolicy, dump_config, load_config
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import Exec
from tests.agents import AgentThread, running_agents, shoal, target_for
from tests.debris import marked, marker_of
from tests.waiting import wait_for
from tests.rawpeer import audit_events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a user and running as it needs root")


@dataclass(frozen=True)
class MadeUser:
    name: str
    group: str  # a supplementary group it belongs to
    home: Path


def _make_user(homeless: bool = False) -> Iterator[MadeUser]:
    suffix = uuid.uuid4().hex[:8]
    name, group = f"shoalu{suffix}", f"shoalg{suffix}"
    subprocess.run(["groupadd", group], check=True)
    home = Path("/nonexistent-shoal") / name if homeless else Path("/home") / name
    args = ["-M", "-d", str(home)] if homeless else ["-m", "-d", str(home)]
    subprocess.run(["useradd", *args, "-s", "/bin/sh", "-G", group, name], check=True)
    try:
        yield MadeUser(name, group, home)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture
def user() -> Iterator[MadeUser]:
    yield from _make_user()


@pytest.fixture
def homeless() -> Iterator[MadeUser]:
    yield from _make_user(homeless=True)


def temp_dir(mode: int) -> Iterator[Path]:
    """A root-owned directory of `mode` outside pytest's private tmp (which no other user may enter)."""
    path = Path(tempfile.mkdtemp(prefix="shoal-runas-"))
    path.chmod(mode)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may write in, for marks left by commands."""
    yield from temp_dir(0o1777)


def test_run_as_a_user_gets_its_ids_groups_home_and_login_variables(capsysbinary, user: MadeUser) -> None:
    with AgentThread() as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--user", user.name, "--",
                                 'id -un; id -gn; id -Gn; echo "$HOME $USER $LOGNAME $SHELL $PATH"; pwd')
    assert status == 0, err
    lines = out.decode().splitlines()
    entry = pwd.getpwnam(user.name)
    assert lines[0] == user.name
    assert lines[1] == user.name  # useradd's user private group
    assert user.group in lines[2].split()
    assert "root" not in lines[2].split()  # root's supplementary groups are dropped
    assert lines[3] == f"{user.home} {user.name} {user.name} /bin/sh {runas.DEFAULT_PATH}"
    assert lines[4] == str(user.home) == entry.pw_dir


def test_a_user_without_a_home_starts_in_root_with_one_warning(capsysbinary, homeless: MadeUser) -> None:
    with AgentThread() as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "-u", homeless.name, "--", "pwd")
    assert status == 0
    assert out == b"/\n"
    assert err.count(b"\n") == 1 and b"Could not chdir to home directory" in err


def test_an_unknown_user_runs_nothing(capsysbinary) -> None:
    with AgentThread() as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "-u", "no-such-user-shoal", "--",
                                 "echo ran")
    assert status == 126
    assert b"ran" not in out
    assert b"no such user" in err


# -- policy ------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[SharedKey, Path]]:
    return {name: (write_key_file(tmp_path / f"{name}.key"), tmp_path / f"{name}.key")
            for name in ("admin", "narrow", "app", "lister")}


@pytest.fixture
def policy_agent(start_agents: Callable[..., AgentThread], tmp_path: Path, keys: dict[str, tuple[SharedKey, Path]],
                 user: MadeUser) -> AgentThread:
    policies = (
        KeyPolicy(name="admin", file=str(keys["admin"][1]), allow_all=True),
        KeyPolicy(name="narrow", file=str(keys["narrow"][1]), allow_all=True, users=("nobody",)),
        KeyPolicy(name="app", file=str(keys["app"][1]), allow_all=True, users=(user.name,)),
        KeyPolicy(name="lister", file=str(keys["lister"][1]), commands=("id -un",)),
    )
    return start_agents(policies=policies, audit_log=str(tmp_path / "audit.jsonl"))


def _run(capsysbinary, agent: AgentThread, key: Path, *args: str):  # type: ignore[no-untyped-def]
    return shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--key-file", str(key), *args)


def test_a_key_not_allowed_the_user_is_denied_and_runs_nothing(
        capsysbinary, policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], user: MadeUser,
        shared_dir: Path, tmp_path: Path) -> None:
    mark = shared_dir / "ran"
    # narrow: an `all` key whose `users` leaves U out; lister: a listed key naming no user,
    # running a command it may run.
    for key, command in (("narrow", f"touch {mark}"), ("lister", "id -un")):
        status, out, err = _run(capsysbinary, policy_agent, keys[key][1], "-u", user.name, "--", command)
        assert (status, out) == (126, b"")
        assert f"permission denied for key {keys[key][0].key_id}".encode() in err
        assert f"may not act as user {user.name!r}".encode() in err
    assert not mark.exists()
    denied = audit_events(tmp_path / "audit.jsonl", event="denied")
    assert [(e["key_id"], e["user"]) for e in denied] == [(keys["narrow"][0].key_id, user.name),
                                                          (keys["lister"][0].key_id, user.name)]
    assert audit_events(tmp_path / "audit.jsonl", event="exec") == []


def test_keys_may_become_the_users_they_list_and_all_keys_anyone(
        capsysbinary, policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], user: MadeUser,
        tmp_path: Path) -> None:
    for key in ("app", "admin"):
        status, out, err = _run(capsysbinary, policy_agent, keys[key][1], "-u", user.name, "--", "id -un")
        assert (status, out) == (0, f"{user.name}\n".encode()), err
    # Every key may name the agent's own user (root here), listed keys too.
    status, out, err = _run(capsysbinary, policy_agent, keys["lister"][1], "-u", "root", "--", "id -un")
    assert (status, out) == (0, b"root\n"), err
    execs = audit_events(tmp_path / "audit.jsonl", event="exec")
    assert [e["user"] for e in execs] == [user.name, user.name, "root"]
    assert {e["user"] for e in audit_events(tmp_path / "audit.jsonl", event="exit")} == {user.name, "root"}


def test_every_exec_is_audited_with_its_user(capsysbinary, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with AgentThread(audit_log=str(audit)) as agent:
        assert shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--", "true")[0] == 0
    assert [e["user"] for e in audit_events(audit, event="exec")] == ["root"]


def test_users_in_the_configuration_file(tmp_path: Path) -> None:
    for name in ("ops", "mon"):
        write_key_file(tmp_path / f"{name}.key")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[[keys]]\nname = "ops"\nfile = "{tmp_path}/ops.key"\nallow = "all"\nusers = ["app", "www-data"]\n'
                    f'[[keys]]\nname = "mon"\nfile = "{tmp_path}/mon.key"\ncommands = ["uptime"]\n')
    config = load_config(str(conf))
    assert [p.users for p in config.keys] == [("app", "www-data"), None]
    assert 'users = ["app", "www-data"]' in dump_config(config)


def test_an_agent_not_running_as_root_refuses_other_users(monkeypatch: pytest.MonkeyPatch, user: MadeUser) -> None:
    monkeypatch.setattr(runas.os, "getuid", lambda: pwd.getpwnam(user.name).pw_uid)
    assert runas.refusal("root", None, True) == "the agent does not run as root and cannot act as 'root'"
    assert runas.refusal(user.name, None, True) is None  # itself


# -- protocol: fields an agent must honour -----------------------------------


async def test_a_required_field_the_agent_does_not_know_is_unsupported_and_runs_nothing(shared_dir: Path) -> None:
    mark = shared_dir / "ran"
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent))
        try:
            proc = await client.exec(Command(shell=f"touch {mark}"))
            assert (await proc.wait()).status == 0 and mark.exists()
            mark.unlink()
            rid = client.new_request_id()
            from shoal.controller.remote import RemoteProcess

            proc = RemoteProcess(client, rid)
            client.requests[rid] = proc
            proc._send(Exec(rid, shell=f"touch {mark}", requires=["user", "teleport"]))  # steps its channel
            result = await proc.wait()
        finally:
            await client.close()
    assert (result.status, result.error_code) == (126, "unsupported")
    assert "teleport" in (result.error or "")
    assert not mark.exists()


def test_the_controller_names_what_the_agent_must_honour() -> None:
    from shoal.controller.remote import required_features

    assert required_features(Command(shell="x")) == []
    assert required_features(Command(shell="x", user="app", pty=True)) == ["user", "pty"]


# -- put and get as a user (point 3) -------------------------------------------


@pytest.fixture
def secret(user: MadeUser) -> Iterator[Path]:
    """A root-only file in a directory the user may enter."""
    folder = Path(tempfile.mkdtemp(prefix="shoal-secret-"))
    folder.chmod(0o755)
    path = folder / "secret"
    path.write_bytes(b"root only\n")
    path.chmod(0o600)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_get_as_a_user_is_refused_a_root_only_file_that_root_gets(capsysbinary, user: MadeUser, secret: Path,
                                                                  tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with AgentThread(audit_log=str(audit)) as agent:
        address = agent.addresses[0]
        status, _, err = shoal(capsysbinary, "get", "--user", user.name, address, str(secret), str(tmp_path / "u"))
        assert status != 0 and b"permission denied" in err
        assert not (tmp_path / "u").exists() or not any((tmp_path / "u").rglob("secret"))
        status, _, err = shoal(capsysbinary, "get", address, str(secret), str(tmp_path / "r"))
        assert status == 0, err
        assert next((tmp_path / "r").rglob("secret")).read_bytes() == b"root only\n"
        secret.chmod(0o644)  # now the user may read it, and gets it
        status, _, err = shoal(capsysbinary, "get", "-u", user.name, address, str(secret), str(tmp_path / "u2"))
        assert status == 0, err
    assert [e.get("user") for e in audit_events(audit, event="get")] == [None, user.name]


def test_put_as_a_user_creates_its_files_and_cannot_write_where_it_may_not(
        capsysbinary, user: MadeUser, secret: Path, shared_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "payload"
    local.write_bytes(b"data\n")
    with AgentThread() as agent:
        address = agent.addresses[0]
        # Into root's directory (0755, root's): refused, and nothing appears.
        status, _, err = shoal(capsysbinary, "put", "--user", user.name, address, str(local), str(secret.parent) + "/")
        assert status != 0 and b"permission denied" in err
        assert sorted(p.name for p in secret.parent.iterdir()) == ["secret"]
        # Over a root-only file: refused, the file unchanged.
        status, _, err = shoal(capsysbinary, "put", "-u", user.name, address, str(local), str(secret))
        assert status != 0
        assert secret.read_bytes() == b"root only\n"
        # Into a directory it may write: created, and owned by the user.
        status, _, err = shoal(capsysbinary, "put", "-u", user.name, address, str(local), str(shared_dir / "mine"))
        assert status == 0, err
        (tmp_path / "tree").mkdir()
        status, _, err = shoal(capsysbinary, "put", "-r", "-u", user.name, address, str(tmp_path / "tree"),
                               str(shared_dir / "tree"))
        assert status == 0, err
    entry = pwd.getpwnam(user.name)
    for made in (shared_dir / "mine", shared_dir / "tree"):
        st = made.stat()
        assert (st.st_uid, st.st_gid) == (entry.pw_uid, entry.pw_gid), made
    assert (shared_dir / "mine").read_bytes() == b"data\n"


def test_a_key_not_allowed_the_user_cannot_transfer_as_it(
        capsysbinary, policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], user: MadeUser,
        shared_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "payload"
    local.write_bytes(b"data\n")
    status, _, err = shoal(capsysbinary, "put", "--key-file", str(keys["narrow"][1]), "-u", user.name,
                           policy_agent.targets_spec(), str(local), str(shared_dir / "x"))
    assert status != 0 and f"may not act as user {user.name!r}".encode() in err
    assert not (shared_dir / "x").exists()
    denied = audit_events(tmp_path / "audit.jsonl", event="denied")
    assert [(e["action"], e["user"]) for e in denied] == [("put", user.name)]


# -- batch and shell -------------------------------------------------------------


def test_batch_runs_every_command_as_the_user(capsysbinary, user: MadeUser, tmp_path: Path) -> None:
    batch = tmp_path / "cmds"
    batch.write_text("id -un\necho $HOME\n")
    with AgentThread() as agent:
        status, out, err = shoal(capsysbinary, "batch", "-q", "--user", user.name, agent.targets_spec(), str(batch))
    assert status == 0, err
    assert f": {user.name}\n".encode() in out and f": {user.home}\n".encode() in out


def test_shell_user_switches_later_commands(user: MadeUser) -> None:
    from tests.e2e.test_pty_e2e import Terminal
    from tests.programs import SHOAL

    with AgentThread() as agent:
        term = Terminal([*SHOAL, "shell", agent.targets_spec()], 24, 80)
        try:
            term.type(b"id -un\r")
            term.expect(rb": root\r?\n")
            term.type(f":user {user.name}\r".encode())
            term.expect(f"user: {user.name}".encode())
            term.type(b"id -un\r")
            term.expect(f": {user.name}\r?\n".encode())
            term.type(b":user\r")
            term.type(b"id -un\r")
            term.expect(rb": root\r?\n")
            term.type(b":quit\r")
            assert term.wait() == 0
        finally:
            term.close()


@pytest.mark.parametrize("name, ok", [("app", True), ("", False), ("a/b", False), ("a:b", False),
                                      ("x" * 257, False), ("a\0b", False)])
def test_user_field_rules(name: str, ok: bool) -> None:
    from shoal.protocol.errors import BadRequestError
    from shoal.protocol.fields import check_request
    from shoal.protocol.messages import GetFile

    for msg in (Exec(1, shell="true", user=name), GetFile(1, path="/x", user=name)):
        if ok:
            check_request(msg)
        else:
            with pytest.raises(BadRequestError, match="^user: "):
                check_request(msg)


def test_an_agent_announcing_no_support_is_refused_by_the_controller(
        capsysbinary, monkeypatch: pytest.MonkeyPatch, shared_dir: Path, tmp_path: Path) -> None:
    """An agent from before issue 17 announces no features and would ignore --user: nothing is sent."""
    import shoal.agent.session as session_module

    monkeypatch.setattr(session_module, "EXEC_FEATURES", frozenset())
    monkeypatch.setattr(session_module, "TRANSFER_FEATURES", frozenset())
    mark = shared_dir / "ran"
    local = tmp_path / "payload"
    local.write_bytes(b"x")
    with AgentThread(audit_log=str(tmp_path / "audit.jsonl")) as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", "-u", "nobody", agent.targets_spec(), "--", f"touch {mark}")
        assert status == 126 and b"does not support user" in err
        status, out, err = shoal(capsysbinary, "run", "-n", "--pty", agent.targets_spec(), "--", f"touch {mark}")
        assert status == 126 and b"does not support pty" in err
        status, out, err = shoal(capsysbinary, "put", "-u", "nobody", agent.targets_spec(), str(local),
                                 str(shared_dir / "put"))
        assert status != 0 and b"does not support user" in err
        status, out, err = shoal(capsysbinary, "get", "-u", "nobody", agent.targets_spec(), "/etc/hostname",
                                 str(tmp_path / "got"))
        assert status != 0 and b"does not support user" in err
    assert not mark.exists() and not (shared_dir / "put").exists()
    assert audit_events(tmp_path / "audit.jsonl", event="exec") == []


async def test_the_agent_announces_every_feature_in_one_list() -> None:
    """Request members and messages (`idle_timeout`, `put_batch`, `tree_user`, `relay`) and `requires`
    names (`user`, `pty`) share HELLO's `features`."""
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent))
        try:
            assert client.features == ["idle_timeout", "pty", "put_batch", "relay", "tree_user", "user"]
        finally:
            await client.close()


def test_a_job_runs_as_its_user_under_the_keys_policy_and_never_as_root(
        capsysbinary, policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], user: MadeUser,
        shared_dir: Path, tmp_path: Path) -> None:
    mark = shared_dir / "ran"
    spec = policy_agent.targets_spec()
    # a key whose `users` leaves U out is denied a job as U too, and nothing runs
    status, out, err = _run(capsysbinary, policy_agent, keys["narrow"][1], "--detach", "-u", user.name, "--",
                            f"touch {mark}")
    assert (status, out) == (126, b"") and f"may not act as user {user.name!r}".encode() in err
    # a key that lists U starts it as U: every process of its tree has U's ids in the process table
    status, out, err = _run(capsysbinary, policy_agent, keys["app"][1], "--detach", "-u", user.name, "--",
                            f"touch {mark}; sleep 300 & exec sleep 300")
    assert status == 0, err
    job = out.decode().rpartition(": job ")[2].strip()
    status, out, _ = shoal(capsysbinary, "jobs", "--json", "--key-file", str(keys["app"][1]), spec)
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (status, row["job"], row["user"]) == (0, job, user.name)
    token = marker_of(int(row["pid"]))
    tree = wait_for(lambda: len(marked(token)) == 2 and marked(token), timeout=10)
    entry = pwd.getpwnam(user.name)
    assert isinstance(tree, list)
    for proc in tree:
        assert tuple(proc.uids()) == (entry.pw_uid,) * 3 and proc.gids().real == entry.pw_gid, proc
    wait_for(mark.exists, timeout=10)
    assert mark.stat().st_uid == entry.pw_uid
    status, table, _ = shoal(capsysbinary, "jobs", "--key-file", str(keys["app"][1]), spec)
    assert table.decode().splitlines()[1].split()[1:5] == [job, "running", "-", user.name]
    status, out, _ = shoal(capsysbinary, "kill", "--key-file", str(keys["app"][1]), spec, job)
    assert (status, out) == (0, f"{spec}: killed job {job} (2 processes)\n".encode())
    wait_for(lambda: not marked(token), timeout=10)
    [started] = audit_events(tmp_path / "audit.jsonl", event="job_start")
    assert (started["job"], started["user"]) == (job, user.name)


def test_a_job_as_a_user_without_a_home_says_so_in_its_output(capsysbinary, homeless: MadeUser) -> None:
    with AgentThread() as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", "--detach", "-u", homeless.name, agent.targets_spec(),
                                 "--", "pwd")
        assert status == 0, err
        job = out.decode().rpartition(": job ")[2].strip()
        status, out, err = shoal(capsysbinary, "attach", agent.targets_spec(), job)
    assert (status, out) == (0, b"/\n")
    assert err.startswith(b"Could not chdir to home directory /nonexistent-shoal/")
