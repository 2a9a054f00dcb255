"""The entrypoint's stdin and stdout as one asyncio byte stream, for the session.

sshd gives a command two pipes (measured with OpenSSH 9.2); other servers, and
inetd-style starters, give one socket for both. asyncio's pipe transports
cannot share one descriptor (each would claim it for reading), so a socket
is opened as a connection instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from typing import BinaryIO

from saia.protocol.h2_wire import AsyncioByteStream


async def open_stdio(stdin: BinaryIO, stdout: BinaryIO) -> AsyncioByteStream:
    """stdin and stdout as one asyncio stream: two pipes, or one socket for both ways."""
    loop = asyncio.get_running_loop()
    if _same_socket(stdin.fileno(), stdout.fileno()):
        # asyncio's pipe transports would each claim the one descriptor for reading.
        both_ways = socket.socket(fileno=os.dup(stdin.fileno()))
        reader, writer = await asyncio.open_connection(sock=both_ways)
        return AsyncioByteStream(reader, writer)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return AsyncioByteStream(reader, writer)


def _same_socket(read_fd: int, write_fd: int) -> bool:
    read, write = os.fstat(read_fd), os.fstat(write_fd)
    same = (read.st_dev, read.st_ino) == (write.st_dev, write.st_ino)
    return same and stat.S_ISSOCK(read.st_mode)
