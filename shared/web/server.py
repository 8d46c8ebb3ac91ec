"""uvicorn on a thread, stopped gracefully from outside.

Running uvicorn off the main thread keeps it from installing its own signal handlers:
the process's SIGTERM handling stays with `shared.lifecycle`, which sets the stop event,
and `stop()` then asks uvicorn to finish in-flight requests (`should_exit`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn


class AppServer:
    def __init__(self, app: Any, host: str, port: int, *, log_level: str = "info",
                 graceful_s: float = 10.0, name: str = "http") -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level.lower(), access_log=False,
            lifespan="on", log_config=None, timeout_graceful_shutdown=graceful_s,
        )
        self._graceful_s = graceful_s
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self, timeout_s: float = 30.0) -> "AppServer":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (port in use? see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start within {timeout_s:.0f}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(self._graceful_s + 5)

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
