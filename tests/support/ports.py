"""Ports on 127.0.0.1: a free one to listen on, and whether one refuses connections."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connect_refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
