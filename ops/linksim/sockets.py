"""Drop a TCP connection at once, so that the peer sees a reset (RST) rather than an orderly close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Final

__all__ = ["LINGER_RST", "abort_writer", "reset_socket"]


LINGER_RST: Final = struct.pack("ii", 1, 0)


def reset_socket(sock: socket.socket) -> None:
    """Close a raw socket so that the peer sees a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    sock.close()


def abort_writer(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Drop a connection at once; with ``reset`` the peer sees RST instead of FIN."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    writer.transport.abort()
