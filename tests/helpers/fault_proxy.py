"""TEST DOUBLE for a misbehaving dependency in front of a real one: an HTTP reverse
proxy that forwards every request to the real upstream (the embedded Argilla server)
except those a planned fault matches, which it answers itself with the planned status
and never forwards. A real Argilla cannot be made to answer 409, 413 or 429 on demand;
everything it does answer here is its own."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class Fault:
    """Answer `status` to up to `times` requests of `method` whose path matches
    `path`, and whose body passes `when` (all bodies if None)."""

    method: str
    path: str
    status: int
    times: int = 1
    when: Callable[[bytes], bool] | None = None
    body: str = '{"detail": "injected by the test"}'

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return (self.times > 0 and method == self.method and re.search(self.path, path) is not None
                and (self.when is None or self.when(body)))


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.injected: list[tuple[str, str, int]] = []  # what was answered by the proxy
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=self.upstream, timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take(self.command, self.path, body)
                if fault is not None:
                    payload = fault.body.encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
                upstream = proxy._client.request(self.command, self.path, content=body, headers=headers)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    fault.times -= 1
                    self.injected.append((method, path, fault.status))
                    return fault
        return None

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
