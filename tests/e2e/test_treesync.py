"""`put -r` and `get -r` as a sync, on real agents over loopback and real files: the
trailing-slash rule both ways, reruns that send nothing, --checksum, --delete and
--dry-run, and symlinks that are never written, read or deleted through."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shoal.agent.config import KeyPolicy
from shoal.controller.client import AgentClient
from shoal.controller.get import host_directory_name
from shoal.controller.tree import RemoveRequest, list_remote
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.errors import RemoteCommandError
from tests.agents import AgentThread, running_agents, shoal, target_for


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 2}


def make_site(root: Path) -> Path:
    site = root / "site"
    (site / "css").mkdir(parents=True)
    (site / "empty").mkdir()
    (site / "index.html").write_bytes(b"<html>")
    (site / "css" / "main.css").write_bytes(b"body{}")
    (site / "blank").write_bytes(b"")
    return site


def tree_of(top: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for directories), links as `-> target`."""
    found: dict[str, bytes | None] = {}
    for path in sorted(top.rglob("*")):
        rel = str(path.relative_to(top))
        if path.is_symlink():
            found[rel] = b"-> " + os.fsencode(os.readlink(path))
        else:
            found[rel] = None if path.is_dir() else path.read_bytes()
    return found


def mtimes(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): p.lstat().st_mtime_ns for p in [top, *top.rglob("*")]}


def test_trailing_slash_copies_contents_and_reruns_converge(agents: AgentThread, tmp_path: Path,
                                                            capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "www"  # missing: created, like cp -r
    host = agents.addresses[0]
    for _ in range(2):
        status, out, err = shoal(capsysbinary, "put", host, "-r", "-p", str(site) + "/", str(dest))
        assert (status, out) == (0, b""), err
    assert tree_of(dest) == tree_of(site)  # contents, never www/site
    assert err == f"{host}: 0 sent, 3 skipped, 0 B\n".encode()


def test_no_slash_makes_a_named_copy(agents: AgentThread, tmp_path: Path,
                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "srv" / "www"
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], "-r", str(site), str(dest))
    assert status == 1 and b"no such file or directory" in err  # the parent is missing: --mkdir
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], "-r", "--mkdir", str(site), str(dest))
    assert status == 0, err
    assert sorted(os.listdir(dest)) == ["site"] and tree_of(dest / "site") == tree_of(site)


def test_second_identical_put_sends_nothing_and_changes_nothing(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "www"
    spec = agents.targets_spec()
    status, _, err = shoal(capsysbinary, "put", spec, "-r", "-p", str(site), str(dest))
    assert status == 0, err
    assert b": 3 sent, 0 skipped, 12 B\n" in err
    before = mtimes(dest)
    status, _, err = shoal(capsysbinary, "put", spec, "-r", "-p", str(site), str(dest))
    assert status == 0 and err.count(b": 0 sent, 3 skipped, 0 B\n") == 2, err
    assert mtimes(dest) == before
    # Without -p nor --checksum every file goes again.
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], "-r", str(site), str(dest))
    assert status == 0 and b": 3 sent, 0 skipped, 12 B\n" in err


def test_checksum_skips_equal_content_and_sends_changed(agents: AgentThread, tmp_path: Path,
                                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "www"
    host = agents.addresses[0]
    assert shoal(capsysbinary, "put", host, "-r", str(site) + "/", str(dest))[0] == 0
    (site / "css" / "main.css").write_bytes(b"body{x}")  # same mtime second is irrelevant to --checksum
    status, _, err = shoal(capsysbinary, "put", host, "-r", "--checksum", str(site) + "/", str(dest))
    assert status == 0 and err == f"{host}: 1 sent, 2 skipped, 7 B\n".encode()
    assert (dest / "css" / "main.css").read_bytes() == b"body{x}"


def test_delete_dry_run_lists_exactly_the_extras_then_delete_removes_them(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "www"
    host = agents.addresses[0]
    assert shoal(capsysbinary, "put", host, "-r", "-p", str(site) + "/", str(dest))[0] == 0
    (dest / "stale.txt").write_bytes(b"old")
    (dest / "old" / "deep").mkdir(parents=True)
    (dest / "old" / "deep" / "x").write_bytes(b"x")
    (dest / "css" / "gone.css").write_bytes(b"")
    before = tree_of(dest)
    status, out, err = shoal(capsysbinary, "put", host, "-r", "-p", "--delete", "--dry-run", str(site) + "/", str(dest))
    assert status == 0, err
    assert out.decode().splitlines() == [f"{host}: would delete {dest}/{rel}" for rel in ("old", "stale.txt", "css/gone.css")]
    assert tree_of(dest) == before
    status, out, err = shoal(capsysbinary, "put", host, "-r", "-p", "--delete", str(site) + "/", str(dest))
    assert (status, out) == (0, b"") and err == f"{host}: 0 sent, 3 skipped, 0 B, 3 deleted\n".encode()
    assert tree_of(dest) == tree_of(site)


def test_dry_run_on_a_new_destination_changes_nothing(agents: AgentThread, tmp_path: Path,
                                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    status, out, _ = shoal(capsysbinary, "put", agents.addresses[0], "-r", "-n", str(site), str(tmp_path / "www"))
    assert status == 0 and not (tmp_path / "www").exists()
    assert sorted(out.decode().splitlines()) == sorted(
        f"{agents.addresses[0]}: would send {tmp_path}/www/site/{rel}" for rel in ("blank", "index.html", "css/main.css"))


def test_a_link_where_the_source_has_a_path_is_refused_not_followed(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "main.css").write_bytes(b"keep")
    dest = tmp_path / "www"
    dest.mkdir()
    (dest / "css").symlink_to(outside)
    (dest / "index.html").symlink_to(outside / "main.css")
    host = agents.addresses[0]
    status, _, err = shoal(capsysbinary, "put", host, "-r", str(site) + "/", str(dest))
    assert status == 1
    assert err == (f"{host}: 1 sent, 0 skipped, 0 B\n"
                   f"shoal: {host}: {dest}/css: is a symbolic link; nothing is written through links (and 1 more)\n"
                   ).encode()
    assert sorted(os.listdir(outside)) == ["main.css"] and (outside / "main.css").read_bytes() == b"keep"
    assert (dest / "blank").read_bytes() == b"" and (dest / "empty").is_dir()


def test_get_r_fetches_trees_both_ways(agents: AgentThread, tmp_path: Path,
                                       capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    remote = tmp_path / "www"
    (remote / "bin").mkdir(parents=True)
    (remote / "empty" / "nested").mkdir(parents=True)
    (remote / "bin" / "blob").write_bytes(bytes(range(256)) * 300)
    (remote / "zero").write_bytes(b"")
    (remote / "link").symlink_to("bin/blob")
    (remote / "out").symlink_to("/etc/passwd")
    os.chmod(remote / "bin", 0o750)
    local = tmp_path / "local"
    status, _, err = shoal(capsysbinary, "get", agents.targets_spec(), "-r", str(remote), str(local))
    assert status == 0, err
    for host in agents.addresses:
        copy = local / host_directory_name(host) / "www"
        assert tree_of(copy) == tree_of(remote)
        assert (copy / "bin").stat().st_mode & 0o777 == 0o750
    status, _, err = shoal(capsysbinary, "get", agents.addresses[0], "-r", str(remote) + "/", str(tmp_path / "flat"))
    assert (status, err) == (0, f"{agents.addresses[0]}: 2 sent, 0 skipped, 75.0 KiB\n".encode())
    assert tree_of(tmp_path / "flat" / host_directory_name(agents.addresses[0])) == tree_of(remote)


def test_sync_flags_need_r(agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "f").write_bytes(b"x")
    status, _, err = shoal(capsysbinary, "put", agents.addresses[0], "--delete", str(tmp_path / "f"), str(tmp_path / "g"))
    assert status == 2 and b"--delete needs -r" in err


async def test_delete_never_follows_a_link_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "tree").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    (root / "tree" / "escape").symlink_to(outside)
    (root / "tree" / "stale").write_bytes(b"")
    key_path = tmp_path / "files.key"
    key = write_key_file(key_path)
    files = KeyPolicy(name="files", file=str(key_path), files=True, file_roots=(str(root),))
    async with running_agents(policies=(files,), state_dir=str(tmp_path / "state"),
                              audit_log=str(tmp_path / "audit.jsonl")) as (agent,):
        client = await AgentClient.connect(target_for(agent, "h1"), key=key)
        tree = str(root / "tree")
        have = await list_remote(client, tree)
        assert have is not None and have["escape"]["type"] == "link" and have["escape"]["target"] == str(outside)
        with pytest.raises(RemoteCommandError) as through:
            await RemoveRequest(client, tree, ["escape/precious"]).wait()
        with pytest.raises(RemoteCommandError) as dotdot:
            await RemoveRequest(client, tree, ["../../outside/precious"]).wait()
        with pytest.raises(RemoteCommandError) as out_of_roots:
            await RemoveRequest(client, str(outside), ["precious"]).wait()
        removed = await RemoveRequest(client, tree, ["escape", "stale", "missing"]).wait()
        await client.close()
    assert through.value.code == "bad_path" and "is a symbolic link" in str(through.value)
    assert dotdot.value.code == "bad_path" and out_of_roots.value.code == "outside_root"
    assert removed == 2 and os.listdir(root / "tree") == []
    assert (outside / "precious").read_bytes() == b"keep"


def test_delete_removes_a_stray_link_itself_never_its_target(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "precious").write_bytes(b"keep")
    dest = tmp_path / "www"
    host = agents.addresses[0]
    assert shoal(capsysbinary, "put", host, "-r", "-p", str(site) + "/", str(dest))[0] == 0
    (dest / "escape").symlink_to(outside)
    (dest / "css" / "sub").symlink_to(outside / "sub")
    status, out, _ = shoal(capsysbinary, "put", host, "-r", "-p", "--delete", "-n", str(site) + "/", str(dest))
    assert status == 0 and out.decode().splitlines() == [f"{host}: would delete {dest}/escape",
                                                         f"{host}: would delete {dest}/css/sub"]
    status, _, err = shoal(capsysbinary, "put", host, "-r", "-p", "--delete", str(site) + "/", str(dest))
    assert status == 0 and err.endswith(b", 2 deleted\n"), err
    assert tree_of(dest) == tree_of(site)
    assert tree_of(outside) == {"sub": None, "sub/precious": b"keep"}


def test_delete_replaces_a_path_of_another_kind(agents: AgentThread, tmp_path: Path,
                                               capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    dest = tmp_path / "www"
    (dest / "index.html").mkdir(parents=True)  # a directory where the source has a file
    (dest / "index.html" / "inner").write_bytes(b"")
    (dest / "css").write_bytes(b"a file where the source has a directory")
    host = agents.addresses[0]
    status, _, err = shoal(capsysbinary, "put", host, "-r", str(site) + "/", str(dest))
    assert status == 1 and b"/www/css: exists and is not a directory" in err  # without --delete: kept
    status, _, err = shoal(capsysbinary, "put", host, "-r", "--delete", str(site) + "/", str(dest))
    assert status == 0 and err == f"{host}: 3 sent, 0 skipped, 12 B, 2 deleted\n".encode(), err
    assert tree_of(dest) == tree_of(site)


class HoldingClient(AgentClient):
    """A client that can hold its frames and write them in one go, so they reach the agent in one read."""

    hold = False

    def flush(self) -> None:
        if not self.hold:
            super().flush()


async def test_tree_requests_are_limited_per_connection(tmp_path: Path) -> None:
    from shoal.agent.treeops import MAX_TREE_REQUESTS
    from shoal.controller.tree import ListTreeRequest

    (tmp_path / "t").mkdir()
    async with running_agents(1) as agents:
        client = await HoldingClient.connect(target_for(agents[0]))
        client.hold = True
        requests = [ListTreeRequest(client, str(tmp_path / "t"), False) for _ in range(MAX_TREE_REQUESTS + 1)]
        client.hold = False
        client.flush()
        outcomes = await asyncio.gather(*(r.wait() for r in requests), return_exceptions=True)
        await client.close()
    refused = [o for o in outcomes if isinstance(o, RemoteCommandError)]
    assert len(refused) == 1 and refused[0].code == "limit"
    assert [o for o in outcomes if not isinstance(o, RemoteCommandError)] == [[]] * MAX_TREE_REQUESTS


def test_delete_keeps_what_another_source_puts_in_the_same_directory(
        agents: AgentThread, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    site = make_site(tmp_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "robots.txt").write_bytes(b"ok")
    (tmp_path / "motd").write_bytes(b"hi")
    dest = tmp_path / "www"
    host = agents.addresses[0]
    args = ["put", host, "-r", "-p", "--delete", str(site) + "/", str(extra) + "/", str(extra), str(tmp_path / "motd"), str(dest)]
    assert shoal(capsysbinary, *args)[0] == 0
    (dest / "stale").write_bytes(b"")
    status, out, err = shoal(capsysbinary, *args[:5], "-n", *args[5:])
    assert (status, out) == (0, f"{host}: would send {dest}/motd\n{host}: would delete {dest}/stale\n".encode()), err
    assert shoal(capsysbinary, *args)[0] == 0
    assert sorted(os.listdir(dest)) == ["blank", "css", "empty", "extra", "index.html", "motd", "robots.txt"]


def test_get_r_never_writes_through_a_local_link(agents: AgentThread, tmp_path: Path,
                                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    remote = tmp_path / "www"
    (remote / "bin").mkdir(parents=True)
    (remote / "bin" / "tool").write_bytes(b"new")
    outside = tmp_path / "outside"
    outside.mkdir()
    host = agents.addresses[0]
    copy = tmp_path / "local" / host_directory_name(host) / "www"
    copy.mkdir(parents=True)
    (copy / "bin").symlink_to(outside)
    status, _, err = shoal(capsysbinary, "get", host, "-r", str(remote), str(tmp_path / "local"))
    assert status == 1
    assert err.endswith(f"shoal: {host}: {copy}/bin: is a symbolic link; nothing is written, read or deleted "
                        f"through links\n".encode())
    assert os.listdir(outside) == []
