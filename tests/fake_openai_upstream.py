"""A tiny OpenAI-compatible chat-completions server, the proxy's upstream in tests.

A TEST DOUBLE: in production the upstream is vLLM (or any OpenAI-compatible server),
which cannot run on these CPU-only test machines. It answers deterministically,
honours `n` and `stream`, and checks the bearer key like `vllm --api-key` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

UPSTREAM_KEY = "upstream-key"


def answer(prompt: str, index: int) -> str:
    return f"reply {index} to: {prompt}"


def create_upstream(api_key: str = UPSTREAM_KEY) -> FastAPI:
    app = FastAPI()
    app.state.requests = []  # what arrived, for assertions on forwarded headers

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        app.state.requests.append(dict(request.headers))
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        body: dict[str, Any] = await request.json()
        try:  # a real server answers a malformed request with 400, as here
            prompt = str(body["messages"][-1]["content"])
            n = int(body.get("n") or 1)
            str(body["model"])
            if not 1 <= n <= 16:
                raise ValueError("n")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            return JSONResponse({"error": {"message": "invalid request", "type": "invalid_request_error"}}, 400)
        cid = f"chatcmpl-{abs(hash((prompt, n, bool(body.get('stream'))))) % 10**12}"
        if body.get("stream"):
            return StreamingResponse(_chunks(cid, body["model"], prompt, n), media_type="text/event-stream")
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": answer(prompt, i)},
                         "finish_reason": "stop", "logprobs": None} for i in range(n)],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5 * n, "total_tokens": 5 + 5 * n},
        })

    return app


def _chunks(cid: str, model: str, prompt: str, n: int) -> Iterator[bytes]:
    def event(choices: list[dict[str, Any]]) -> bytes:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    for i in range(n):
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for i in range(n):
        for word in answer(prompt, i).split(" "):
            piece = word if word.startswith("reply") else " " + word
            yield event([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "finish_reason": "stop"}])
    yield b"data: [DONE]\n\n"
