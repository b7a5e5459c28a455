"""shoal.hostio.atomic, .reader, .fileerrors and shoal.agent.paths on real files: atomic puts, crash cleanup, root checks, streamed gets."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shoal.agent import paths
from shoal.hostio import atomic, fileerrors, reader
from shoal.hostio.atomic import TEMP_MARK, AtomicWriter, Journal, WriterState
from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.reader import FileReader, walk_tree
from shoal.agent.paths import resolve_path
from tests.agents import running_agents

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Names of temp files a writer left in `directory`."""
    return [name for name in os.listdir(directory) if TEMP_MARK in name]


def put(dest: Path | str, data: bytes, **options: object) -> AtomicWriter:
    """Write `data` in 64 KiB chunks and commit with its true hash."""
    with AtomicWriter.open(dest, **options) as writer:  # type: ignore[arg-type]
        for start in range(0, len(data), 65536):
            writer.write(data[start:start + 65536])
        writer.commit(sha(data))
    return writer


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def dest_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "dest"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("module", [atomic, fileerrors, reader, paths])
def test_public_names_are_exported(module: ModuleType) -> None:
    assert all(hasattr(module, name) for name in module.__all__)


# -- atomic writes ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MIB])
def test_write_is_byte_exact(dest_dir: Path, state_dir: Path, size: int) -> None:
    data = os.urandom(size)
    writer = put(dest_dir / "f", data, journal=Journal(state_dir))
    assert (dest_dir / "f").read_bytes() == data
    assert writer.size == size and writer.state is WriterState.COMMITTED
    assert leftovers(dest_dir) == []
    assert Journal(state_dir).cleanup() == []


def test_300_mb_file_streams_through_in_small_memory(dest_dir: Path) -> None:
    dest = dest_dir / "big"
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        with AtomicWriter.open(dest) as writer:
            for _ in range(300):
                chunk = os.urandom(MIB)
                expected.update(chunk)
                writer.write(chunk)
            writer.commit(expected.hexdigest())
        with FileReader.open(dest) as reader:
            while reader.read(MIB):
                pass
        peak = tracemalloc.get_traced_memory()[1]
        assert reader.size == 300 * MIB and reader.bytes_read == 300 * MIB
        assert reader.hexdigest() == expected.hexdigest()
        # A few chunks in flight at most; a whole-file buffer would be 300 MiB.
        assert peak < 16 * MIB
    finally:
        tracemalloc.stop()
        dest.unlink(missing_ok=True)


def test_checksum_mismatch_keeps_old_file_and_removes_temp(dest_dir: Path, state_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old contents")
    writer = AtomicWriter.open(dest, journal=Journal(state_dir))
    writer.write(b"new contents")
    with pytest.raises(FileTransferError) as caught:
        writer.commit(sha(b"something else"))
    assert caught.value.code == "checksum_mismatch"
    assert dest.read_bytes() == b"old contents"
    assert leftovers(dest_dir) == []
    assert writer.state is WriterState.ABORTED
    assert Journal(state_dir).cleanup() == []


def test_abort_keeps_old_file(dest_dir: Path, state_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old")
    writer = AtomicWriter.open(dest, journal=Journal(state_dir))
    writer.write(b"partial")
    assert leftovers(dest_dir) != []
    writer.abort()
    writer.abort()
    assert dest.read_bytes() == b"old"
    assert leftovers(dest_dir) == []
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_exception_inside_with_block_aborts(dest_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old")
    with pytest.raises(KeyError):
        with AtomicWriter.open(dest) as writer:
            writer.write(b"partial")
            raise KeyError("connection lost")
    assert dest.read_bytes() == b"old"
    assert leftovers(dest_dir) == []


def test_leaving_with_block_without_commit_aborts(dest_dir: Path) -> None:
    with AtomicWriter.open(dest_dir / "f") as writer:
        writer.write(b"data")
    assert not (dest_dir / "f").exists()
    assert leftovers(dest_dir) == []


def test_temp_file_is_hidden_beside_destination(dest_dir: Path) -> None:
    with AtomicWriter.open(dest_dir / "report.txt") as writer:
        assert writer.temp.parent == dest_dir
        assert writer.temp.name.startswith(".report.txt.shoal-tmp-")
        assert stat.S_IMODE(writer.temp.stat().st_mode) == 0o600


def test_temp_name_of_a_very_long_name_fits_name_max(dest_dir: Path) -> None:
    name = "a" + "é" * 126  # 253 bytes in UTF-8; the temp name cuts inside an "é"
    data = b"long name"
    put(dest_dir, data, name=name)
    assert (dest_dir / name).read_bytes() == data


# -- crash cleanup ----------------------------------------------------------------

CRASH_SCRIPT = """
import os, signal, sys
from shoal.hostio.atomic import AtomicWriter, Journal
writer = AtomicWriter.open(sys.argv[1], journal=Journal(sys.argv[2]))
for _ in range(4):
    writer.write(b"x" * 65536)
print(writer.temp, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_journal_cleanup_removes_temp_of_killed_agent(dest_dir: Path, state_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old")
    child = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(dest), str(state_dir)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    temp = child.stdout.strip()
    assert Path(temp).stat().st_size == 4 * 65536
    assert Journal(state_dir).cleanup() == [temp]
    assert leftovers(dest_dir) == []
    assert dest.read_bytes() == b"old"
    assert Journal(state_dir).cleanup() == []


BATCH_CRASH_SCRIPT = """
import os, signal, sys
from pathlib import Path
from shoal.agent.batch import BatchWrite
from shoal.hostio.atomic import Journal
from shoal.hostio.files import LOCAL_FILES
root = Path(sys.argv[1])
entries = [{"path": f"{root}/sub", "dir": True}] + [
    {"path": f"{root}/sub/f{i}", "size": 3, "sha256": "0" * 64} for i in range(3)]
batch = BatchWrite(root, str(root), entries, memoryview(b"abc" * 3), LOCAL_FILES, Journal(sys.argv[2]), None)
batch.write()
print(len(os.listdir(root / "sub")), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_journal_cleanup_removes_the_temp_files_of_a_killed_batch(dest_dir: Path, state_dir: Path) -> None:
    child = subprocess.run([sys.executable, "-c", BATCH_CRASH_SCRIPT, str(dest_dir), str(state_dir)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "3"  # three temp files written, none renamed
    assert len(Journal(state_dir).cleanup()) == 3
    assert os.listdir(dest_dir / "sub") == []
    assert list(Journal(state_dir).directory.iterdir()) == []


async def test_a_starting_agent_leaves_a_live_agents_transfer_alone(dest_dir: Path, state_dir: Path) -> None:
    """Two agents sharing a state directory: the second start must not remove the
    temp file of a put the first is still writing; a start with no agent left does."""
    async with running_agents(state_dir=str(state_dir)):
        writer = AtomicWriter.open(dest_dir / "f", journal=Journal(state_dir))  # as the first agent's put
        writer.write(b"x" * 65536)
        async with running_agents(state_dir=str(state_dir)):
            assert leftovers(dest_dir) == [writer.temp.name]
    assert leftovers(dest_dir) == [writer.temp.name]  # its writer "killed": nobody finished it
    async with running_agents(state_dir=str(state_dir)):
        assert leftovers(dest_dir) == []


def test_journal_cleanup_with_no_journal_yet(state_dir: Path) -> None:
    assert Journal(state_dir).cleanup() == []


def test_journal_never_deletes_a_path_that_is_not_a_temp_file(tmp_path: Path, state_dir: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep")
    journal = Journal(state_dir)
    journal.record(precious)
    assert journal.cleanup() == []
    assert precious.read_bytes() == b"keep"
    assert list(journal.directory.iterdir()) == []


# -- attributes -------------------------------------------------------------------


def test_mode_is_applied_exactly(dest_dir: Path) -> None:
    put(dest_dir / "f", b"x", mode=0o640)
    assert stat.S_IMODE((dest_dir / "f").stat().st_mode) == 0o640


def test_new_file_without_mode_follows_umask(dest_dir: Path) -> None:
    old = os.umask(0o027)
    try:
        put(dest_dir / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest_dir / "f").stat().st_mode) == 0o640


def test_replacing_without_mode_keeps_the_old_mode(dest_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old")
    dest.chmod(0o604)
    put(dest, b"new")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604


def test_mtime_is_set_when_given(dest_dir: Path) -> None:
    put(dest_dir / "f", b"x", mtime=1_600_000_000.5)
    assert (dest_dir / "f").stat().st_mtime_ns == 1_600_000_000_500_000_000


def test_mtime_is_time_of_writing_when_not_given(dest_dir: Path) -> None:
    dest = dest_dir / "f"
    dest.write_bytes(b"old")
    os.utime(dest, (1_000_000_000, 1_000_000_000))
    put(dest, b"new")
    assert dest.stat().st_mtime_ns != 1_000_000_000 * 1_000_000_000


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_owner_is_set_and_kept_as_root(dest_dir: Path) -> None:
    dest = dest_dir / "f"
    put(dest, b"x", owner=(1234, 5678))
    assert (dest.stat().st_uid, dest.stat().st_gid) == (1234, 5678)
    put(dest, b"replaced")
    assert (dest.stat().st_uid, dest.stat().st_gid) == (1234, 5678)


# -- into a directory -------------------------------------------------------------


def test_existing_directory_with_name_receives_the_file(dest_dir: Path) -> None:
    writer = put(dest_dir, b"data", name="a.txt")
    assert writer.dest == dest_dir / "a.txt"
    assert (dest_dir / "a.txt").read_bytes() == b"data"


def test_trailing_slash_means_into_directory(dest_dir: Path) -> None:
    put(f"{dest_dir}/", b"data", name="a.txt")
    assert (dest_dir / "a.txt").read_bytes() == b"data"


def test_existing_directory_without_name_is_refused(dest_dir: Path) -> None:
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(dest_dir)
    assert caught.value.code == "is_directory"


def test_directory_at_the_final_name_is_refused(dest_dir: Path) -> None:
    (dest_dir / "a.txt").mkdir()
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(dest_dir, name="a.txt")
    assert caught.value.code == "is_directory"
    assert leftovers(dest_dir) == []


@pytest.mark.parametrize("make, code", [
    (lambda path: None, "not_found"),
    (lambda path: path.write_bytes(b"file"), "not_directory"),
])
def test_into_dir_needs_an_existing_directory(dest_dir: Path, make: object, code: str) -> None:
    target = dest_dir / "sub"
    make(target)  # type: ignore[operator]
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(target, name="a.txt", into_dir=True)
    assert caught.value.code == code


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape"])
def test_name_must_be_one_path_component(dest_dir: Path, name: str) -> None:
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(dest_dir, name=name)
    assert caught.value.code == "bad_path"


def test_missing_parent_directory_is_not_found(dest_dir: Path, state_dir: Path) -> None:
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(dest_dir / "missing" / "f", journal=Journal(state_dir))
    assert caught.value.code == "not_found"
    assert str(dest_dir / "missing" / "f") in str(caught.value)
    assert Journal(state_dir).cleanup() == []


# -- roots ------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    allowed = tmp_path / "root"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return allowed


def test_path_inside_root_resolves(root: Path) -> None:
    assert resolve_path(f"{root}/sub/../sub/new.txt", [str(root)]) == root / "sub" / "new.txt"
    assert resolve_path(str(root), [str(root)]) == root


def test_dotdot_escape_is_refused(root: Path) -> None:
    with pytest.raises(FileTransferError) as caught:
        resolve_path(f"{root}/sub/../../outside/x", [str(root)])
    assert caught.value.code == "outside_root"


def test_symlink_escape_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "sub" / "door").symlink_to(tmp_path / "outside")
    with pytest.raises(FileTransferError) as caught:
        resolve_path(f"{root}/sub/door/x", [str(root)])
    assert caught.value.code == "outside_root"


def test_symlink_staying_inside_root_is_followed(root: Path) -> None:
    (root / "link").symlink_to(root / "sub")
    assert resolve_path(f"{root}/link/f", [str(root)]) == root / "sub" / "f"


def test_sibling_with_root_as_name_prefix_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "x")
    sibling.mkdir()
    with pytest.raises(FileTransferError) as caught:
        resolve_path(str(sibling / "f"), [str(root)])
    assert caught.value.code == "outside_root"


def test_no_roots_allows_anywhere_and_empty_roots_allow_nothing(root: Path) -> None:
    assert resolve_path(f"{root}/sub", None) == root / "sub"
    with pytest.raises(FileTransferError):
        resolve_path(f"{root}/sub", [])


@pytest.mark.parametrize("path", ["relative/file", "", "/etc/\0passwd"])
def test_relative_or_nul_paths_are_refused(path: str) -> None:
    with pytest.raises(FileTransferError) as caught:
        resolve_path(path, None)
    assert caught.value.code == "bad_path"


# -- failures of the filesystem ---------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so a 2 MiB write runs out of space for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_disk_full_is_no_space_and_leaves_no_temp(tiny_tmpfs: Path, state_dir: Path) -> None:
    writer = AtomicWriter.open(tiny_tmpfs / "f", journal=Journal(state_dir))
    with pytest.raises(FileTransferError) as caught:
        for _ in range(32):
            writer.write(b"z" * 65536)
    assert caught.value.code == "no_space"
    assert writer.state is WriterState.ABORTED
    assert os.listdir(tiny_tmpfs) == []
    assert Journal(state_dir).cleanup() == []


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory we may not write into: read-only bind mount as root, mode 0555 otherwise."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_bytes(b"old")
    if os.geteuid() != 0:
        source.chmod(0o555)
        yield source
        source.chmod(0o755)
        return
    view = tmp_path / "readonly"
    view.mkdir()
    for argv in (["mount", "--bind", str(source), str(view)],
                 ["mount", "-o", "remount,bind,ro", str(view)]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", str(view)], capture_output=True)
            pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_unwritable_directory_is_permission_denied(unwritable_dir: Path, state_dir: Path) -> None:
    with pytest.raises(FileTransferError) as caught:
        AtomicWriter.open(unwritable_dir / "f", journal=Journal(state_dir))
    assert caught.value.code == "permission_denied"
    assert (unwritable_dir / "f").read_bytes() == b"old"
    assert leftovers(unwritable_dir) == []
    assert Journal(state_dir).cleanup() == []


@pytest.mark.parametrize("number, code", [
    (errno.ENOENT, "not_found"), (errno.EACCES, "permission_denied"),
    (errno.EPERM, "permission_denied"), (errno.EROFS, "permission_denied"),
    (errno.ENOSPC, "no_space"), (errno.EDQUOT, "no_space"), (errno.EISDIR, "is_directory"),
    (errno.ENOTDIR, "not_directory"), (errno.EIO, "io_error"), (errno.ELOOP, "io_error"),
])
def test_os_errors_map_to_codes(number: int, code: str) -> None:
    error = map_os_error(OSError(number, os.strerror(number)), "/srv/data")
    assert error.code == code
    assert str(error) == f"/srv/data: {os.strerror(number).lower()}"


def test_message_is_one_line_even_for_hostile_names() -> None:
    error = FileTransferError("not_found", "/tmp/evil\nERROR forged")
    assert "\n" not in str(error)
    assert error.path == "/tmp/evil\nERROR forged"


# -- reading ----------------------------------------------------------------------


def test_reader_streams_file_with_its_attributes(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    source = tmp_path / "f"
    source.write_bytes(data)
    source.chmod(0o751)
    os.utime(source, (1_500_000_000, 1_500_000_000))
    with FileReader.open(source) as reader:
        chunks = list(iter(lambda: reader.read(65536), b""))
    assert b"".join(chunks) == data
    assert (reader.size, reader.mode, reader.mtime) == (200_000, 0o751, 1_500_000_000)
    assert reader.hexdigest() == sha(data)


@pytest.mark.parametrize("make, code", [
    (lambda path: path.mkdir(), "is_directory"),
    (lambda path: None, "not_found"),
    (lambda path: os.mkfifo(path), "io_error"),
])
def test_reader_refuses_what_is_not_a_regular_file(tmp_path: Path, make: object, code: str) -> None:
    target = tmp_path / "thing"
    make(target)  # type: ignore[operator]
    with pytest.raises(FileTransferError) as caught:
        FileReader.open(target)
    assert caught.value.code == code


# -- walking ----------------------------------------------------------------------


def test_walk_lists_tree_parents_first_without_following_links(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "b" / "c").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"a")
    (top / "b" / "c" / "deep.txt").write_bytes(b"deep")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"s")
    (top / "link").symlink_to(tmp_path / "outside")
    found = dict(walk_tree(top))
    assert list(found) == ["a.txt", "b", "link", "b/c", "b/c/deep.txt"]
    assert stat.S_ISLNK(found["link"].st_mode)
    assert stat.S_ISDIR(found["b/c"].st_mode)
    assert found["b/c/deep.txt"].st_size == 4


@pytest.mark.parametrize("make, code", [
    (lambda path: path.write_bytes(b"file"), "not_directory"),
    (lambda path: None, "not_found"),
])
def test_walk_needs_a_directory(tmp_path: Path, make: object, code: str) -> None:
    target = tmp_path / "top"
    make(target)  # type: ignore[operator]
    with pytest.raises(FileTransferError) as caught:
        list(walk_tree(target))
    assert caught.value.code == code
