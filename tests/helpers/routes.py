"""Serve a FastAPI router alone, as the App would on its port: for tests of one
endpoint (the webhook listener, the run API) without the rest of a service."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI

from shared.web import AppServer


@contextmanager
def serving(*routers: Any) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT) while the routers are served."""
    app = FastAPI()
    for router in routers:
        app.include_router(router)
    with AppServer(app, "127.0.0.1", 0, log_level="warning", graceful_s=1) as server:
        yield f"http://127.0.0.1:{server.port}"
