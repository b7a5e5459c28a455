"""Reading (and hashing) a local file on a thread of its own, a few chunks ahead of the sender.

A put's read thread also computes the file's sha256, the costliest stage of a
checked copy on CPUs without SHA extensions. As one executor job per chunk it
would stop after each chunk until the event loop asked for the next; here it
keeps going until `depth` chunks wait unsent, so the hash runs back to back
while the loop sends. Memory stays at `depth` chunks.
"""

from __future__ import annotations

import asyncio
import threading

from shoal.hostio.bulk import start_bulk_thread
from shoal.hostio.reader import FileReader

__all__ = ["ReadAhead"]


class ReadAhead:
    """Chunks of one `FileReader`, read by a thread up to `depth` chunks ahead.

    Use on one event loop: `await next()` until it returns b"", then `await close()`
    (also on every error path: it waits until no read is using the file).
    """

    def __init__(self, reader: FileReader, size: int, depth: int = 4) -> None:
        self.reader = reader
        self._size = size
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._stopping = False
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        # A file of one chunk (most of a recursive put) gains nothing from a
        # thread: it is read by executor jobs, one per next().
        self._threaded = reader.size > size
        self._job: asyncio.Future[bytes] | None = None  # the executor read, unthreaded
        if self._threaded:
            start_bulk_thread(self._read, name="shoal-read")

    async def next(self) -> bytes:
        """The next chunk; b"" at end of file.

        Raises:
            FileTransferError: the file could not be read.
        """
        if not self._threaded:
            # Shielded: if our caller is cancelled the read still runs, and close()
            # must wait for it before the file may be closed.
            self._job = self._loop.run_in_executor(None, self.reader.read, self._size)
            return await asyncio.shield(self._job)
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        self._slots.release()  # a chunk taken makes room for one more read
        return item

    async def close(self) -> None:
        """Stop reading and wait until the thread is done with the file."""
        self._stopping = True
        if self._threaded:
            self._slots.release()
            await asyncio.shield(self._stopped)
        elif self._job is not None:  # its error, if any, was raised by next()
            await asyncio.gather(asyncio.shield(self._job), return_exceptions=True)

    def _read(self) -> None:
        try:
            while True:
                self._slots.acquire()
                if self._stopping:
                    return
                try:
                    data = self.reader.read(self._size)
                except Exception as exc:  # handed to the loop, raised by next()
                    self._post(exc)
                    return
                self._post(data)
                if not data:
                    return
        finally:
            self._post_done()

    def _post(self, item: bytes | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _post_done(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._stopped.set_result, None)
        except RuntimeError:
            pass
