"""Writing frames to a transport without joining them first.

Python 3.11's `Transport.writelines` concatenates its buffers, which copies every
1 MiB output chunk once more. When the transport has nothing queued (the common
case on a healthy connection) we hand the head and body to the kernel with one
`writev`, and only queue what the socket did not take. TLS transports always go
through the transport, which must encrypt.
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["raw_fd", "write_buffers"]

_IOV_MAX = 512


def raw_fd(transport: asyncio.Transport) -> int:
    """The socket fd we may writev to directly, or -1 (TLS must go through the transport).

    Look it up once per connection: `get_extra_info` is too slow for every frame.
    """
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


def write_buffers(transport: asyncio.Transport, bufs: list[bytes], fd: int) -> None:
    """Send `bufs` in order: straight to `fd` (from raw_fd) when the transport has
    nothing queued, else through the transport."""
    if fd < 0 or transport.get_write_buffer_size() or len(bufs) > _IOV_MAX:
        transport.writelines(bufs)
        return
    try:
        sent = os.writev(fd, bufs)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.writelines(bufs)  # let the transport see and report the error
        return
    for i, buf in enumerate(bufs):
        if sent < len(buf):
            rest = [memoryview(buf)[sent:], *bufs[i + 1:]]
            transport.write(b"".join(rest))
            return
        sent -= len(buf)
