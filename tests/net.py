"""Sockets and ports for tests that start servers on this machine."""

from __future__ import annotations

import socket


def free_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1, for a server to listen on."""
    # The protocol number is spelled out: accepted sockets copy it, and asyncio sets
    # TCP_NODELAY only on sockets whose proto is IPPROTO_TCP. With the default 0,
    # Nagle holds an answer's body until the client's delayed ACK of its headers (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A port nobody listens on (connections to it are refused) until someone takes it.

    The dev cluster's nodes are this machine, so a port free here is free there too.
    """
    with free_socket() as sock:
        port: int = sock.getsockname()[1]
    return port
