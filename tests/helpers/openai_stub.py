"""A small local OpenAI-compatible chat-completions server for tests.

TEST DOUBLE: it stands in for vLLM or a hosted model, which cannot run on these
machines. It answers `POST /v1/chat/completions` deterministically from the request,
and can be told to fail (HTTP 500) or to be slow, so timeouts and errors are testable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, HTTPException, Request

from shared.embedded.ports import free_port, wait_for_port


def create_stub_app(mode: str = "ok", delay_s: float = 0.0, parallel: bool = False) -> FastAPI:
    """`delay_s` blocks the server's event loop (one stuck model: requests queue up);
    with `parallel` it only delays each answer (a model server with spare capacity)."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, object]:
        body = await request.json()
        app.state.calls += 1
        if mode == "error":
            raise HTTPException(status_code=500, detail="upstream exploded")
        if delay_s and parallel:
            await asyncio.sleep(delay_s)
        elif delay_s:
            time.sleep(delay_s)  # blocks this worker on purpose: a stuck model
        last = body["messages"][-1]["content"]
        n = int(body.get("n", 1))
        return {
            "id": f"chatcmpl-{app.state.calls}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": i, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": f"{body['model']} answer {i} to: {last}"}}
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn on a free port; yields its base URL ending in /v1."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for_port("127.0.0.1", port, 10)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(5)
