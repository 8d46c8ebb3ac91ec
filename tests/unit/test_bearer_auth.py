"""The bearer-token dependencies of the HTTP APIs (capture, policy server, trainer).

They must be coroutines: FastAPI runs a plain `def` dependency on its worker-thread
pool, one thread hop per request, which measured ~9% of capture's single-event
request (bench/capture_throughput.py: 0.50 -> 0.63 of the raw producer when it went).
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from fastapi import HTTPException, Request
from pydantic import SecretStr

from services.capture.auth import token_checker
from shared.auth import bearer_dependency

TOKEN = SecretStr("s3cret-token")


def request_with(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/outputs", "headers": headers})


@pytest.mark.parametrize("make", [lambda: bearer_dependency(TOKEN, "RLHF_X__TOKEN"),
                                  lambda: token_checker(TOKEN, disabled=False),
                                  lambda: token_checker(None, disabled=True)],
                         ids=["shared", "capture", "capture-auth-disabled"])
def test_every_token_dependency_is_a_coroutine_so_fastapi_calls_it_on_the_event_loop(make) -> None:  # type: ignore[no-untyped-def]
    assert inspect.iscoroutinefunction(make())


def test_the_dependency_admits_the_token_and_refuses_anything_else_with_401() -> None:
    check = bearer_dependency(TOKEN, "RLHF_X__TOKEN")
    assert asyncio.run(check(request_with("Bearer s3cret-token"))) is None
    assert asyncio.run(check(request_with("bearer s3cret-token"))) is None  # the scheme is case-insensitive
    for wrong in (None, "Bearer nope", "Basic s3cret-token", "s3cret-token"):
        with pytest.raises(HTTPException) as refused:
            asyncio.run(check(request_with(wrong)))
        assert refused.value.status_code == 401
        assert refused.value.headers == {"WWW-Authenticate": "Bearer"}
        assert "RLHF_X__TOKEN" in refused.value.detail and "s3cret" not in refused.value.detail
