"""The transfer threads on their own: ChunkSink (write + hash) and ReadAhead (read + hash).

Real files in tmp_path; what is checked is what a transfer relies on: content and
sha256 exact, progress never ahead of both threads, and no thread still holding
the file once `finish`/`cancel`/`close` returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

from shoal.hostio.bulk import BULK_NICE
from shoal.hostio.atomic import AtomicWriter
from shoal.hostio.reader import FileReader
from shoal.hostio.readahead import ReadAhead
from shoal.hostio.sink import ChunkSink
from tests.waiting import wait_for_async

MiB = 1024 * 1024


def shoal_threads() -> list[str]:
    """Sink and read-ahead threads still alive (named shoal-...-write/-hash, shoal-read)."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith("shoal-") and t.name.endswith(("-write", "-hash", "-read"))]


async def threads_end() -> list[str]:
    """Shoal threads left once they had a moment to exit: a thread's last act is
    telling the loop it is done with the file, and it exits right after."""
    await wait_for_async(lambda: not shoal_threads(), what="shoal's transfer threads to exit")
    return shoal_threads()


async def test_sink_writes_and_hashes_every_chunk_in_order(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, MiB, 3 * MiB + 7, 0, 5)]
    granted: list[int] = []
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, granted.append, MiB, on_error=lambda: None)
    for chunk in chunks:
        sink.push(chunk)
    await sink.finish()
    data = b"".join(chunks)
    assert writer.size == len(data) and writer.hexdigest() == hashlib.sha256(data).hexdigest()
    writer.commit(hashlib.sha256(data).hexdigest())
    assert (tmp_path / "out").read_bytes() == data
    assert 0 < sum(granted) <= len(data) and all(n >= MiB for n in granted)
    assert await threads_end() == []


async def test_small_file_is_written_without_threads(tmp_path: Path) -> None:
    """Under one step, no thread starts: finish() writes and hashes it in one job."""
    data = [os.urandom(1000), os.urandom(MiB - 2000)]
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, lambda n: None, MiB, on_error=lambda: None, name="small")
    for chunk in data:
        sink.push(chunk)
    assert not [name for name in shoal_threads() if name.startswith("shoal-small-")] and writer.size == 0
    await sink.finish()
    assert writer.size == MiB - 1000
    assert writer.hexdigest() == hashlib.sha256(b"".join(data)).hexdigest()
    writer.commit(writer.hexdigest())
    assert (tmp_path / "out").read_bytes() == b"".join(data)


async def test_sink_grants_only_what_both_threads_finished(tmp_path: Path) -> None:
    """Progress is the smaller of written and hashed: with one stage ahead of the
    other, nothing is granted past the slower one."""
    granted: list[int] = []
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, granted.append, MiB, on_error=lambda: None)
    sink._advance("write", 4 * MiB)  # as the writer thread reports it
    assert granted == []
    sink._advance("hash", 3 * MiB)
    assert granted == [3 * MiB]
    await sink.cancel()
    writer.abort()


async def test_sink_cancel_stops_both_threads_before_the_file_is_dropped(tmp_path: Path) -> None:
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, lambda n: None, MiB, on_error=lambda: None)
    for _ in range(16):
        sink.push(os.urandom(MiB))
    await sink.cancel()
    assert await threads_end() == []
    writer.abort()
    assert os.listdir(tmp_path) == []


async def test_read_ahead_yields_the_file_and_its_sha256(tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 3)
    (tmp_path / "src").write_bytes(data)
    reader = FileReader.open(tmp_path / "src")
    chunks = ReadAhead(reader, MiB, depth=2)
    got = []
    while chunk := await chunks.next():
        got.append(chunk)
    await chunks.close()
    reader.close()
    assert b"".join(got) == data and max(map(len, got)) == MiB
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await threads_end() == []


async def test_read_ahead_closed_early_lets_go_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(8 * MiB))
    reader = FileReader.open(tmp_path / "src")
    chunks = ReadAhead(reader, MiB, depth=2)
    assert len(await chunks.next()) == MiB
    await chunks.close()
    assert await threads_end() == []
    assert reader.bytes_read <= 4 * MiB  # at most depth + 1 read ahead, never the whole file
    reader.close()


async def test_read_ahead_never_runs_more_than_depth_chunks_ahead(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(16 * MiB))
    reader = FileReader.open(tmp_path / "src")
    chunks = ReadAhead(reader, MiB, depth=3)
    await chunks.next()
    await wait_for_async(lambda: reader.bytes_read >= 4 * MiB, what="the read-ahead thread to fill its slots")
    assert reader.bytes_read == 4 * MiB  # the one taken plus three waiting
    await chunks.close()
    reader.close()


async def test_transfer_threads_run_below_the_event_loop_priority(tmp_path: Path) -> None:
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, lambda n: None, MiB, on_error=lambda: None)
    sink.push(os.urandom(MiB))  # a step's worth starts the threads
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    want = min(19, base + BULK_NICE)
    bulk = [t for t in threading.enumerate() if t.name in ("shoal-put-write", "shoal-put-hash")]
    def niced() -> bool:
        return [os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in bulk if t.is_alive()] == [want, want]
    await wait_for_async(niced, what=f"both transfer threads at nice {want}")
    await sink.finish()
    writer.abort()


async def test_read_ahead_reads_a_one_chunk_file_without_a_thread(tmp_path: Path) -> None:
    assert await threads_end() == []
    data = os.urandom(1000)
    (tmp_path / "src").write_bytes(data)
    reader = FileReader.open(tmp_path / "src")
    chunks = ReadAhead(reader, MiB)
    assert await chunks.next() == data
    assert shoal_threads() == []
    assert await chunks.next() == b""
    await chunks.close()
    reader.close()
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_cancelled_small_file_write_is_waited_for_before_the_file_is_dropped(tmp_path: Path) -> None:
    """finish() cancelled mid-write leaves its executor job running; cancel() must
    wait for it, or the caller would abort (close) the file under a running write."""
    writer = AtomicWriter.open(tmp_path / "out")
    sink = ChunkSink(writer, lambda n: None, 4 * MiB, on_error=lambda: None)
    sink.push(os.urandom(4 * MiB - 1))
    finishing = asyncio.ensure_future(sink.finish())
    await asyncio.sleep(0)  # finish() has handed the write to the executor
    finishing.cancel()
    await sink.cancel()
    assert writer.size == 4 * MiB - 1  # the job was over when cancel() returned
    writer.abort()
    assert finishing.cancelled() and os.listdir(tmp_path) == []


async def test_cancelled_unthreaded_read_is_waited_for_by_close(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(4 * MiB))
    reader = FileReader.open(tmp_path / "src")
    chunks = ReadAhead(reader, 4 * MiB)  # one chunk: no thread, executor reads
    reading = asyncio.ensure_future(chunks.next())
    await asyncio.sleep(0)
    reading.cancel()
    await chunks.close()
    assert reader.bytes_read == 4 * MiB  # the read was over when close() returned
    reader.close()
