"""Atomic writes for `put`, and the journal that cleans up after a killed one.

Writes never expose a half-written destination: data goes to a hidden temp file in
the destination directory (same filesystem, so the final rename is atomic), is
checked against the sender's sha256, fsynced, then renamed over the destination,
and the directory is fsynced so the rename survives a power cut. A `Journal` in the
agent's state directory remembers temp files in flight, so the next agent start
removes what a killed transfer left behind. Memory per transfer is one chunk plus a
hash state: nothing here ever reads a whole file.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import logging
import os
import re
import secrets
import stat
from pathlib import Path
from types import TracebackType

from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.files import LOCAL_FILES, Files
from shoal.hostio.reader import maybe_stat
from shoal.protocol.errors import ErrorCode

__all__ = ["TEMP_MARK", "process_umask", "fsync_directory", "temp_path_for", "Journal", "JournalHold", "WriterState",
           "AtomicWriter"]

log = logging.getLogger(__name__)

# The hidden temp name keeps the destination's name readable for an operator who
# finds a stray one; the random suffix makes concurrent puts to one file safe.
TEMP_MARK = ".shoal-tmp-"
_TEMP_TOKEN_BYTES = 8
_TEMP_NAME = re.compile(rb"^\..*" + re.escape(TEMP_MARK.encode()) + rb"[0-9a-f]{16}\Z", re.DOTALL)
# Name bytes kept in a temp name: with the dot and suffix it stays under NAME_MAX (255).
_TEMP_STEM_BYTES = 200
# Used only when /proc cannot tell us the umask.
_FALLBACK_UMASK = 0o022
_JOURNAL_DIR = "transfers"
# AtomicWriter asks the kernel to start writing back every this many bytes, so
# the fsync at commit finds little left: otherwise a 2 GB put ends with a second
# or more of pure disk wait after the last byte arrived.
_WRITEBACK_STEP = 8 * 1024 * 1024


class Journal:
    """Remember temp files in flight so the next agent start can remove leftovers.

    One tiny file per temp file (or per batch of them) lives in
    `<state_dir>/transfers/`, named by a hash of the (first) temp path and holding
    the paths, NUL-separated. It is written before the temp files are created and
    removed after commit or abort, so only a killed or crashed transfer leaves one
    behind. Entries are not fsynced: the target is a dead agent process, not a
    power cut (which may also lose the temp file's data).
    """

    __slots__ = ("directory",)

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(state_dir) / _JOURNAL_DIR

    def record(self, temp: Path) -> None:
        """Note that `temp` is about to be created."""
        self.record_all([temp])

    def record_all(self, temps: list[Path]) -> None:
        """Note in one entry that all of `temps` are about to be created (a batch's)."""
        if not temps:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._entry(temps[0]).write_bytes(b"\0".join(map(os.fsencode, temps)))
        except OSError as err:
            raise map_os_error(err, self.directory) from err

    def forget(self, temp: Path) -> None:
        """Drop the entry for `temp` (or the batch it came first in): committed or removed."""
        try:
            self._entry(temp).unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot drop transfer journal entry for %s: %s", temp, err)

    def cleanup(self) -> list[str]:
        """Remove temp files left by transfers that never finished; clear the journal.

        Returns:
            The temp paths that were removed. An entry whose path does not look like
            one of our temp names is dropped without touching the path it names.
        """
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as err:
            raise map_os_error(err, self.directory) from err
        return [path for entry in entries for path in _clear_entry(entry)]

    def _entry(self, temp: Path) -> Path:
        """Return the journal file for `temp`."""
        return self.directory / hashlib.sha256(os.fsencode(temp)).hexdigest()[:32]


class JournalHold:
    """One agent's share of its state directory's journal, held for the agent's life.

    Several agents may share a state directory (two on one host with the default
    one, or `shoal demo` beside a real agent). Each holds a shared flock on
    `<state_dir>/transfers.lock`, and a starting agent removes leftovers only when
    it can take that lock alone: it never removes the temp files of a transfer
    another live agent is still writing. Leftovers of a killed agent wait until a
    start finds no other agent running.
    """

    __slots__ = ("path", "fd")

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / (_JOURNAL_DIR + ".lock")
        self.fd: int | None = None

    def acquire(self) -> list[str] | None:
        """Take this agent's share, cleaning leftovers first when no other agent holds one.

        Returns:
            The temp paths removed, or None when another agent holds the directory.
        Raises:
            FileTransferError: the state directory or its lock cannot be made or opened.
        """
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise map_os_error(err, self.path) from err
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self.fd, fcntl.LOCK_SH)  # waits only while another start cleans
            return None
        try:
            return Journal(self.path.parent).cleanup()
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None


def _clear_entry(entry: Path) -> list[str]:
    """Remove the temp files one journal entry names, then the entry; say what went."""
    try:
        removed = [path for raw in entry.read_bytes().split(b"\0") if (path := _unlink_temp(raw)) is not None]
        entry.unlink()
    except OSError as err:
        log.warning("cannot clear transfer journal entry %s: %s", entry, err)
        return []
    return removed


def _unlink_temp(raw: bytes) -> str | None:
    """Unlink the temp path `raw` if it is one of ours and still there."""
    if not _TEMP_NAME.match(os.path.basename(raw)) or not os.path.isabs(raw):
        log.warning("ignoring transfer journal entry naming %r", raw)
        return None
    try:
        os.unlink(raw)
    except FileNotFoundError:
        return None
    log.info("removed temp file of an unfinished transfer: %s", os.fsdecode(raw))
    return os.fsdecode(raw)


class WriterState(enum.Enum):
    """Where an AtomicWriter is in its life: only OPEN accepts data."""

    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


class AtomicWriter:
    """Receive one file into a temp beside its destination, then rename it into place.

    Use as a context manager, or call `commit` or `abort` yourself: leaving the
    block without a commit (normally or by an exception) aborts. Any failure inside
    `write` or `commit` aborts too, so a failed transfer never leaves a temp file
    or a changed destination behind.
    """

    __slots__ = ("dest", "temp", "size", "state", "_fd", "_hash", "_mode", "_mtime",
                 "_owner", "_journal", "_written_back", "_files")

    def __init__(self, dest: Path, temp: Path, fd: int, mode: int, mtime: float | None,
                 owner: tuple[int, int] | None, journal: Journal | None, files: Files = LOCAL_FILES) -> None:
        self.dest = dest
        self.temp = temp
        self.size = 0
        self.state = WriterState.OPEN
        self._fd = fd
        self._hash = hashlib.sha256()
        self._mode = mode
        self._mtime = mtime
        self._owner = owner
        self._journal = journal
        self._written_back = 0  # bytes already handed to early writeback
        self._files = files

    @classmethod
    def open(cls, dest: str | os.PathLike[str], *, name: str | None = None,
             into_dir: bool = False, mode: int | None = None, mtime: float | None = None,
             owner: tuple[int, int] | None = None,
             journal: Journal | None = None, files: Files = LOCAL_FILES,
             temp: Path | None = None) -> AtomicWriter:
        """Start writing a file at `dest`, or into the directory `dest` as `name`.

        Args:
            dest: destination path (already checked by `resolve_path`). A string
                ending in `/` means the same as `into_dir=True`.
            name: basename to use when `dest` is an existing directory (`cp`-style
                put). Without it an existing directory at `dest` is an error, which
                is what a recursive put wants for each exact path it writes.
            into_dir: `dest` must be an existing directory.
            mode: permission bits of the result. None keeps the mode of the file
                being replaced, or gives a new file 0o666 less the umask.
            mtime: modification time to set (`-p`); None leaves the time of writing.
            owner: (uid, gid) to set when running as root (`-p`); ignored otherwise.
                None keeps the owner of the file being replaced when root.
            journal: where to note the temp file so a crash can be cleaned up.
            temp: the temp file to use, from `temp_path_for(dest)`, when the caller
                noted it in the journal itself (a batch notes all of its files in
                one entry, and passes no `journal`).
            files: whose rights look at the destination, create the temp file and
                rename it into place (the agent passes a user's, so the kernel
                checks that user's rights at every step).

        Raises:
            FileTransferError: is_directory, not_directory, not_found, bad_path,
                permission_denied, no_space or io_error.
        """
        into = into_dir or os.fspath(dest).endswith("/")
        target = _target_path(Path(dest), name, into, files)
        final_mode, final_owner = _final_attributes(target, mode, owner, files)
        temp = temp if temp is not None else temp_path_for(target)
        if journal is not None:
            journal.record(temp)
        try:
            fd = files.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            if journal is not None:
                journal.forget(temp)
            raise map_os_error(err, target) from err
        return cls(target, temp, fd, final_mode, mtime, final_owner, journal, files)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append `chunk` to the temp file and to the running sha256."""
        self._require_open()
        self.add_to_hash(chunk)
        self.write_data(chunk)

    def add_to_hash(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed `chunk` to the running sha256: one half of `write`.

        The halves exist so a caller can hash on one thread while another writes
        (hashlib and os.write both release the GIL), which makes a checked copy
        cost max(hash, write) instead of their sum. Each half must then be given
        every chunk, in order; the hash is only read on the caller's thread at
        `commit`, after both have finished. It does not check the state: hashing
        after a failed write aborted the writer is harmless, and checking would
        make the hashing thread race the writing one's error.
        """
        self._hash.update(chunk)

    def write_data(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append `chunk` to the temp file without hashing it: the other half of `write`."""
        self._require_open()
        view = memoryview(chunk).cast("B")
        self.size += view.nbytes
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as err:
            self.abort()
            raise map_os_error(err, self.dest) from err
        if self.size - self._written_back >= _WRITEBACK_STEP:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Start writing the bytes since the last call to disk, without waiting.

        POSIX_FADV_DONTNEED makes Linux queue the range's dirty pages for writeback
        (pages still being written stay cached); the commit's fsync then only waits
        for the tail. Advice that fails changes nothing but the timing.
        """
        start, self._written_back = self._written_back, self.size
        try:
            os.posix_fadvise(self._fd, start, self.size - start, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass

    def hexdigest(self) -> str:
        """Return the sha256 of everything written so far."""
        return self._hash.hexdigest()

    def commit(self, expected_sha256: str) -> None:
        """Check the data against `expected_sha256`, then make it the destination.

        Raises:
            FileTransferError: checksum_mismatch (the destination is untouched and
                the temp file removed), or the code of a failing syscall.
        """
        self.seal(expected_sha256)
        self.install()
        fsync_directory(self.dest.parent)

    def seal(self, expected_sha256: str) -> None:
        """Check the data, give the temp file its owner, mode and mtime, fsync and close it.

        The first half of `commit`, for callers that seal many files before
        renaming any (a batch of small files: see `start_writeback`).

        Raises:
            FileTransferError: as `commit`; the writer is then aborted.
        """
        self._require_open()
        actual = self._hash.hexdigest()
        if actual != expected_sha256.strip().lower():
            self.abort()
            raise FileTransferError(ErrorCode.CHECKSUM_MISMATCH, self.dest,
                                    f"sha256 of received data is {actual}, sender said {expected_sha256}")
        try:
            self._seal()
        except OSError as err:
            self.abort()
            raise map_os_error(err, self.dest) from err

    def install(self) -> None:
        """Rename the sealed temp file over the destination: the second half of `commit`.

        The directory is not fsynced here; the caller does it (once per directory
        for a batch) with `fsync_directory`.
        """
        self._require_open()
        if self._fd >= 0:
            raise ValueError(f"writer for {self.dest} is not sealed")
        try:
            self._files.rename(self.temp, self.dest)
        except OSError as err:
            self.abort()
            raise map_os_error(err, self.dest) from err
        self._finish(WriterState.COMMITTED)

    def start_writeback(self) -> None:
        """Have the kernel start writing what was written so far, without waiting.

        A batch writes all its files, starts their writeback, and only then
        fsyncs them: the fsyncs find the data on its way and mostly wait for
        journal commits together, instead of one flush each.
        """
        if self.size > self._written_back:
            self._start_writeback()

    def abort(self) -> None:
        """Throw the data away: close and remove the temp file. Safe to call twice."""
        if self.state is not WriterState.OPEN:
            return
        self._close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
        except OSError as err:
            # Keep the journal entry: the next agent start gets another try.
            log.warning("cannot remove temp file %s: %s", self.temp, err)
            self.state = WriterState.ABORTED
            return
        self._finish(WriterState.ABORTED)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()

    def _seal(self) -> None:
        """Apply owner, mode and time to the temp file, flush it to disk and close it."""
        if self._owner is not None:
            os.fchown(self._fd, *self._owner)
        os.fchmod(self._fd, self._mode)  # after chown, which may clear set-id bits
        if self._mtime is not None:  # -p sets the modification time; atime stays as is
            atime = os.stat(self._fd).st_atime_ns
            os.utime(self._fd, ns=(atime, round(self._mtime * 1_000_000_000)))
        os.fsync(self._fd)
        self._close()

    def _close(self) -> None:
        """Close the temp file descriptor if still open."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _finish(self, state: WriterState) -> None:
        """Record the end state and drop the journal entry."""
        self.state = state
        if self._journal is not None:
            self._journal.forget(self.temp)

    def _require_open(self) -> None:
        """Refuse use after commit or abort: that is a bug in the caller."""
        if self.state is not WriterState.OPEN:
            raise ValueError(f"writer for {self.dest} is already {self.state.value}")


def _target_path(dest: Path, name: str | None, into: bool, files: Files) -> Path:
    """Decide the final file path from `dest`, the sender's `name` and `into`."""
    st = maybe_stat(dest, follow=True, files=files)
    if st is not None and stat.S_ISDIR(st.st_mode):
        if name is None:
            raise FileTransferError(ErrorCode.IS_DIRECTORY, dest)
        return dest / _check_basename(name)
    if into:
        raise FileTransferError(ErrorCode.NOT_FOUND if st is None else ErrorCode.NOT_DIRECTORY, dest)
    return dest


def _check_basename(name: str) -> str:
    """Refuse a `name` that is not a single plain path component."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise FileTransferError(ErrorCode.BAD_PATH, name, "file name must be a single path component")
    return name


def _final_attributes(target: Path, mode: int | None, owner: tuple[int, int] | None,
                      files: Files) -> tuple[int, tuple[int, int] | None]:
    """Return the mode and owner the committed file gets (owner None: leave ours)."""
    st = maybe_stat(target, follow=False, files=files)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FileTransferError(ErrorCode.IS_DIRECTORY, target)
    existing = st if st is not None and stat.S_ISREG(st.st_mode) else None
    if mode is None:
        mode = stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~process_umask()
    if os.geteuid() != 0:
        return mode, None
    if owner is None and existing is not None:
        owner = (existing.st_uid, existing.st_gid)
    return mode, owner

def process_umask() -> int:
    """Read the umask without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _FALLBACK_UMASK


def temp_path_for(dest: Path) -> Path:
    """A fresh hidden temp path beside `dest`, for the file that will become `dest`."""
    stem = os.fsdecode(os.fsencode(dest.name)[:_TEMP_STEM_BYTES])
    return dest.parent / f".{stem}{TEMP_MARK}{secrets.token_hex(_TEMP_TOKEN_BYTES)}"


def fsync_directory(directory: Path) -> None:
    """Flush a directory so a rename inside it is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise map_os_error(err, directory) from err
