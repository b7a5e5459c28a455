"""Feeding a put's chunks to disk and to its sha256 on two threads that never wait for the loop.

A checked put costs a sha256 of every byte, and on CPUs without SHA extensions
that hash is the slowest stage of the whole copy. Run as executor jobs, the hash
would stop after every batch until the event loop came round to submit the next
one; on a busy machine that gap is a scheduler slice each time. Here the hasher
and the writer are threads of their own, each draining its own queue of the same
chunks in order, so the hash runs back to back while the loop only receives.

Memory stays bounded by the sender's window: `on_progress` reports bytes both
threads are done with, and only those are granted back.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Callable, Union

from shoal.hostio.bulk import start_bulk_thread
from shoal.hostio.atomic import AtomicWriter
from shoal.hostio.fileerrors import FileTransferError

__all__ = ["ChunkSink"]

_STOP = object()  # end of a queue; never equal to a chunk, even an empty one
_Item = Union[bytes, object]


class ChunkSink:
    """Writes and hashes chunks for one `AtomicWriter`; lives on one event loop.

    `push` and `finish` are called on the loop thread. `on_progress(n)` is called
    there too, each time at least `step` more bytes are both written and hashed;
    `on_error()` once a write failed (`error` holds why).
    """

    def __init__(self, writer: AtomicWriter, on_progress: Callable[[int], None], step: int,
                 on_error: Callable[[], None], name: str = "put") -> None:
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self._on_progress = on_progress
        self._on_error = on_error
        self._step = step
        self._name = name
        self._done = {"write": 0, "hash": 0}
        self._reported = 0
        self._cancelled = False
        self.error: FileTransferError | None = None
        self._queues: dict[str, queue.SimpleQueue[_Item]] = {}
        self._finished: dict[str, asyncio.Future[None]] = {}
        self._held: list[bytes] = []  # chunks of a file too small (so far) for the threads
        self._held_bytes = 0
        self._held_job: asyncio.Future[FileTransferError | None] | None = None

    def push(self, chunk: bytes) -> None:
        """Queue `chunk` for both stages.

        The threads start only once `step` bytes have come: a smaller file is
        written and hashed by one executor job in `finish`, since two threads
        per file would cost a recursive put of many small files more than the
        hashing they overlap.
        """
        if not chunk:
            return
        if self._queues:
            for q in self._queues.values():
                q.put(chunk)
            return
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes >= self._step:
            self._start_threads()

    def _start_threads(self) -> None:
        """Start both threads, handing them what was held so far."""
        for stage, work in (("write", self.writer.write_data), ("hash", self.writer.add_to_hash)):
            q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
            for held in self._held:
                q.put(held)
            self._queues[stage] = q
            self._finished[stage] = self._loop.create_future()
            start_bulk_thread(self._drain, stage, work, name=f"shoal-{self._name}-{stage}")
        self._held = []

    async def finish(self) -> None:
        """Wait until every pushed chunk is written and hashed.

        Raises:
            FileTransferError: a write failed (the writer is then already aborted).
        """
        await self._stop()
        if self.error is not None:
            raise self.error

    async def cancel(self) -> None:
        """Drop what is still queued and wait for both threads to let go of the file."""
        self._cancelled = True
        await self._stop()

    async def _stop(self) -> None:
        if not self._queues:  # never started: write what is held, unless cancelled
            if self._held and not self._cancelled and self._held_job is None:
                self._held_job = self._loop.run_in_executor(None, _write_held, self.writer, self._held)
                self._held = []
            if self._held_job is not None:
                # Shielded like the threads' futures: a cancelled finish() leaves the
                # job writing, and cancel() must still wait for it.
                self.error = self.error or await asyncio.shield(self._held_job)
            return
        for q in self._queues.values():
            q.put(_STOP)
        # Shielded: a cancelled waiter must not cancel these, or a later wait
        # (before aborting the writer) would return while a thread still writes.
        await asyncio.gather(*(asyncio.shield(f) for f in self._finished.values()))

    # -- the threads -----------------------------------------------------------

    def _drain(self, stage: str, work: Callable[[bytes], None]) -> None:
        q = self._queues[stage]
        since = 0
        try:
            while (chunk := q.get()) is not _STOP:
                if self._cancelled or self.error is not None or not isinstance(chunk, bytes):
                    continue  # keep draining to the stop mark, touching nothing
                try:
                    work(chunk)
                except FileTransferError as err:
                    self.error = err
                    self._call(self._on_error)
                    continue
                since += len(chunk)
                if since >= self._step:
                    self._call(self._advance, stage, since)
                    since = 0
            if since:
                self._call(self._advance, stage, since)
        finally:
            self._call(self._stopped, stage)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop is closed: the agent is exiting, nobody waits for us

    # -- back on the loop ------------------------------------------------------

    def _stopped(self, stage: str) -> None:
        self._finished[stage].set_result(None)

    def _advance(self, stage: str, n: int) -> None:
        self._done[stage] += n
        ready = min(self._done.values()) - self._reported
        if ready >= self._step and not self._cancelled:
            self._reported += ready
            self._on_progress(ready)


def _write_held(writer: AtomicWriter, chunks: list[bytes]) -> FileTransferError | None:
    """A small file's chunks, hashed and written in one executor job; the error if any."""
    try:
        for chunk in chunks:
            writer.write(chunk)
    except FileTransferError as err:
        return err
    return None
