"""Stdin for many hosts: spool once, let each host read at its own pace.

With a fan-out smaller than the host count, later hosts start after earlier ones
have consumed stdin, so the bytes must be kept somewhere; keeping them in memory
would be unbounded. We append what we read to an unlinked temporary file and let
each host's task read it from offset 0, waiting for more while the source is open.
Memory stays at one chunk per host; the file holds the rest.
"""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Callable

from shoal.protocol.defaults import DATA_CHUNK

__all__ = ["StdinSpool"]


class StdinSpool:
    """Bytes from a file descriptor, replayable by any number of readers."""

    def __init__(self) -> None:
        import tempfile  # with shutil behind it: only when stdin is forwarded

        self._file = tempfile.TemporaryFile(prefix="shoal-stdin-")
        self._size = 0
        self._eof = False
        self._grew = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop_reading: Callable[[], object] | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> StdinSpool:
        spool = cls()
        spool._append(data)
        spool._eof = True
        return spool

    @classmethod
    def from_fd(cls, fd: int) -> StdinSpool:
        """Start spooling `fd` (a pipe or file) in a background thread-reader."""
        spool = cls()
        spool._task = asyncio.get_running_loop().create_task(spool._pump(fd))
        return spool

    @classmethod
    def from_terminal(cls, fd: int) -> StdinSpool:
        """Spool a terminal's keys as they are typed, read on the event loop.

        A thread blocked in read() on a terminal would outlive the command (nothing
        more is typed) and hold up the loop's shutdown; a reader callback does not.
        """
        spool = cls()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(fd, DATA_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                spool._append(data)
                return
            loop.remove_reader(fd)
            spool._eof = True
            spool._grew.set()

        loop.add_reader(fd, readable)
        spool._stop_reading = lambda: loop.remove_reader(fd)
        return spool

    async def _pump(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.run_in_executor(None, os.read, fd, DATA_CHUNK)
                if not data:
                    break
                self._append(data)
        finally:
            self._eof = True
            self._grew.set()

    def _append(self, data: bytes) -> None:
        os.pwrite(self._file.fileno(), data, self._size)
        self._size += len(data)
        self._grew.set()

    async def chunks(self, size: int = DATA_CHUNK) -> AsyncIterator[bytes]:
        """Yield everything spooled, from the start, until the source's EOF."""
        offset = 0
        while True:
            if offset < self._size:
                data = os.pread(self._file.fileno(), min(size, self._size - offset), offset)
                offset += len(data)
                yield data
            elif self._eof:
                return
            else:
                self._grew.clear()
                await self._grew.wait()

    def close(self) -> None:
        if self._stop_reading is not None:
            self._stop_reading()
            self._stop_reading = None
        if self._task is not None:
            self._task.cancel()
        self._file.close()
