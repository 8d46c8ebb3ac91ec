"""Free local ports for embedded parts."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now. Another process may still take it before it is bound;
    callers that start a server on it retry on a failed start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first of `count` consecutive ports that are all free right now (for `up`,
    which gives service i the port base + i). Drawn below Linux's ephemeral range
    (32768+), where `free_port` and outgoing connections take theirs."""
    import random

    for _ in range(attempts):
        base = random.randint(20_000, 32_000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")
