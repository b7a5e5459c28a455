"""Trees as another user (issue 17 point 3 for `put -r`/`get -r`), and a user's own errors.

Real agents on loopback run by this (root) test process, the real `shoal` CLI
in-process, and a user made by `useradd` for the test. What a user could do is
read from the file system afterwards (owners, what is there, what is not), and
what it would have been told from the user's own `cat` and `ls`, run through
`shoal run --user`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shoal.agent import runas
from shoal.agent.asuser import UserFiles
from shoal.controller.putbatch import SMALL_FILE
from tests.agents import AgentThread, shoal
from tests.e2e.test_runas_e2e import MadeUser, _make_user, temp_dir
from tests.e2e.test_treesync import make_site, tree_of
from tests.rawpeer import audit_events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a user and acting as it needs root")


@pytest.fixture
def user() -> Iterator[MadeUser]:
    yield from _make_user()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A root-owned directory every user may enter."""
    yield from temp_dir(0o755)


def _owners(top: Path) -> set[tuple[int, int]]:
    return {(p.lstat().st_uid, p.lstat().st_gid) for p in [top, *top.rglob("*")]}


def test_get_r_as_a_user_lists_and_fetches_only_what_it_can_read(
        capsysbinary: pytest.CaptureFixture[bytes], user: MadeUser, public_dir: Path, tmp_path: Path) -> None:
    tree = public_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "pub.txt").write_bytes(b"public\n")
    (tree / "sub" / "a.txt").write_bytes(b"a\n")
    (tree / "private").mkdir(mode=0o700)
    (tree / "private" / "hidden.txt").write_bytes(b"root's\n")
    for path in [tree, tree / "sub"]:
        path.chmod(0o755)
    audit = tmp_path / "audit.jsonl"
    with AgentThread(audit_log=str(audit)) as agent:
        host = agent.addresses[0]
        # A directory the user cannot read: the listing fails as `ls -R` would, and nothing comes.
        status, _, err = shoal(capsysbinary, "get", "-r", "-u", user.name, host, str(tree), str(tmp_path / "u"))
        assert status == 1 and err.endswith(f"{tree}/private: permission denied\n".encode()), err
        assert not any((tmp_path / "u").rglob("hidden.txt"))
        # Root lists and fetches it all.
        status, _, err = shoal(capsysbinary, "get", "-r", host, str(tree), str(tmp_path / "r"))
        assert status == 0, err
        assert tree_of(next((tmp_path / "r").iterdir()) / "tree") == tree_of(tree)
        # Readable directory, root-only file: listed (as `ls` shows it), not fetched.
        (tree / "private").chmod(0o755)
        (tree / "private" / "hidden.txt").chmod(0o600)
        status, _, err = shoal(capsysbinary, "get", "-r", "-u", user.name, host, str(tree), str(tmp_path / "u2"))
        assert status == 1 and err.endswith(f"{tree}/private/hidden.txt: permission denied\n".encode()), err
        assert not any((tmp_path / "u2").rglob("hidden.txt"))
        (tree / "private" / "hidden.txt").chmod(0o644)
        status, _, err = shoal(capsysbinary, "get", "-r", "-u", user.name, host, str(tree), str(tmp_path / "u3"))
        assert status == 0, err
    assert tree_of(next((tmp_path / "u3").iterdir()) / "tree") == tree_of(tree)
    assert [e.get("user") for e in audit_events(audit, event="list")] == [None, user.name, user.name]  # done ones


def test_put_r_as_a_user_syncs_with_the_users_rights(
        capsysbinary: pytest.CaptureFixture[bytes], user: MadeUser, public_dir: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    (site / "big.bin").write_bytes(os.urandom(SMALL_FILE * 2))  # sent alone; the rest in a batch
    shared = public_dir / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    dest = shared / "www"
    audit = tmp_path / "audit.jsonl"
    entry = pwd.getpwnam(user.name)
    put = ["put", "-r", "-u", user.name]
    with AgentThread(audit_log=str(audit), state_dir=str(tmp_path / "state")) as agent:
        host = agent.addresses[0]
        status, _, err = shoal(capsysbinary, *put, "-p", host, f"{site}/", str(dest))
        assert (status, err) == (0, f"{host}: 4 sent, 0 skipped, 128.0 KiB\n".encode())
        assert tree_of(dest) == tree_of(site)
        assert _owners(dest) == {(entry.pw_uid, entry.pw_gid)}  # the user's, every one
        for flags in (["-p"], ["--checksum"]):  # the user's listing (and hashes) find it all in place
            status, _, err = shoal(capsysbinary, *put, *flags, host, f"{site}/", str(dest))
            assert (status, err) == (0, f"{host}: 0 sent, 4 skipped, 0 B\n".encode())
        # --delete removes what the user may remove, and stops at what it may not.
        (dest / "stale").write_bytes(b"")
        os.chown(dest / "stale", entry.pw_uid, entry.pw_gid)
        (dest / "zz-root").mkdir()
        (dest / "zz-root" / "keep").write_bytes(b"root's")
        status, _, err = shoal(capsysbinary, *put, "-p", "--delete", host, f"{site}/", str(dest))
        assert status == 1 and err.endswith(f"{dest}/zz-root/keep: permission denied\n".encode()), err
        assert not (dest / "stale").exists() and (dest / "zz-root" / "keep").read_bytes() == b"root's"
        # Into a directory only root may write: refused, nothing made.
        status, _, err = shoal(capsysbinary, *put, host, f"{site}/", str(public_dir / "www"))
        assert status == 1 and err.endswith(f"{public_dir}/www: permission denied\n".encode()), err
        assert sorted(os.listdir(public_dir)) == ["shared"]
    assert {e.get("user") for e in audit_events(audit, event="put_batch")} == {user.name}
    assert {e.get("user") for e in audit_events(audit, event="list")} == {user.name}
    assert [(e["path"], e.get("user")) for e in audit_events(audit, event="delete")] == [(str(dest / "stale"),
                                                                                           user.name)]


def test_a_user_gets_the_errors_its_own_cat_and_ls_would_give(
        capsysbinary: pytest.CaptureFixture[bytes], user: MadeUser, public_dir: Path, tmp_path: Path) -> None:
    closed = public_dir / "closed"
    (closed / "d").mkdir(parents=True)
    closed.chmod(0o700)
    local = tmp_path / "payload"
    local.write_bytes(b"x")
    with AgentThread() as agent:
        host = agent.addresses[0]
        status, _, err = shoal(capsysbinary, "run", "-n", "-u", user.name, host, "--",
                               f"cat {closed}/missing; ls {closed}/d")
        assert err.count(b"Permission denied") == 2, err
        for path, root_says in ((closed / "missing", "no such file or directory"), (closed / "d", "is a directory")):
            for who, says in ((["-u", user.name], "permission denied"), ([], root_says)):
                status, _, err = shoal(capsysbinary, "get", *who, host, str(path), str(tmp_path / "got"))
                assert status == 1 and err.endswith(f"{path}: {says}\n".encode()), (who, err)
        for who, says in ((["-u", user.name], "permission denied"), ([], "no such file or directory")):
            status, _, err = shoal(capsysbinary, "get", "-r", *who, host, f"{closed}/missing", str(tmp_path / "got"))
            assert status == 1 and err.endswith(f"{closed}/missing: {says}\n".encode()), (who, err)
        status, _, err = shoal(capsysbinary, "put", "-u", user.name, host, str(local), f"{closed}/d/")
        assert status == 1 and b"permission denied" in err
    assert os.listdir(closed / "d") == []


def test_the_file_helper_keeps_nothing_it_inherited_and_ends_with_its_request(
        user: MadeUser, public_dir: Path) -> None:
    secret = public_dir / "secret"
    secret.write_bytes(b"root's")
    secret.chmod(0o600)
    read_end, write_end = os.pipe()
    files = UserFiles(runas.lookup(user.name))
    try:
        assert files.stat(public_dir).st_uid == 0  # the helper is running now
        helper = [p for p in psutil.Process().children() if p.uids().real == pwd.getpwnam(user.name).pw_uid]
        assert len(helper) == 1
        os.close(write_end)
        assert os.read(read_end, 1) == b""  # end of file: the helper did not keep our write end
        with pytest.raises(PermissionError):
            files.open(secret, os.O_RDONLY)
        made = public_dir / "made"
        with pytest.raises(PermissionError):
            files.mkdir(made)
    finally:
        files.close()
        os.close(read_end)
    assert not helper[0].is_running()  # ended and reaped
    assert not made.exists()


def test_an_agent_that_would_list_as_itself_gets_no_tree_request_as_a_user(
        capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch, user: MadeUser,
        public_dir: Path, tmp_path: Path) -> None:
    """An agent announcing `user` but not `tree_user` would list and delete with its own rights."""
    monkeypatch.setattr("shoal.protocol.connection.AGENT_FEATURES", ("idle_timeout", "put_batch"))
    site = make_site(tmp_path)
    audit = tmp_path / "audit.jsonl"
    with AgentThread(audit_log=str(audit)) as agent:
        host = agent.addresses[0]
        status, _, err = shoal(capsysbinary, "put", "-r", "-u", user.name, host, f"{site}/", str(public_dir / "www"))
        assert status == 1 and b"does not support tree_user" in err, err
        status, _, err = shoal(capsysbinary, "get", "-r", "-u", user.name, host, str(site), str(tmp_path / "got"))
        assert status == 1 and b"does not support tree_user" in err, err
    assert os.listdir(public_dir) == [] and not (tmp_path / "got").exists()
    assert audit_events(audit, event="mkdir") == audit_events(audit, event="list") == []
