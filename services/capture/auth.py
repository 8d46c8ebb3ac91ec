"""Bearer-token auth for the ingest API, and where the token comes from.

The token is a SecretStr from settings (a Kubernetes Secret in production) and is
compared in constant time. It is never logged; only the file that holds a generated
token is named.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Request
from pydantic import SecretStr

from shared.auth import bearer_dependency, bearer_matches, token_or_generated

from .settings import CaptureSettings


def token_checker(token: SecretStr | None, disabled: bool) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency raising 401 unless the request carries the bearer token
    (a coroutine, so FastAPI calls it inline: see shared.auth.bearer_dependency)."""
    if disabled:
        async def open_door(request: Request) -> None:  # annotated: FastAPI reads the signature
            return None

        return open_door
    return bearer_dependency(_required(token), "RLHF_CAPTURE__TOKEN")


def token_test(token: SecretStr | None, disabled: bool) -> Callable[[str | None], bool]:
    """What `token_checker` checks, as a predicate of the Authorization header's value
    (for the ingest fast path, which sees raw headers)."""
    if disabled:
        return lambda _authorization: True
    required = _required(token)
    return lambda authorization: bearer_matches(authorization, required)


def _required(token: SecretStr | None) -> SecretStr:
    """The token, which auth being on requires."""
    if token is None or not token.get_secret_value():
        raise ValueError("set RLHF_CAPTURE__TOKEN, or RLHF_CAPTURE__AUTH_DISABLED=true for local use")
    return token


def with_token(settings: CaptureSettings) -> CaptureSettings:
    """Settings with a token: the configured one, or one generated once into
    DATA_DIR/capture/token (0600) so `rlhf-loop up` works without setup and stays
    closed to anyone who cannot read that file."""
    options = settings.capture
    if options.auth_disabled or options.token is not None:
        return settings
    token = token_or_generated(None, Path(settings.data_dir) / "capture" / "token", "RLHF_CAPTURE__TOKEN")
    return settings.model_copy(update={"capture": options.model_copy(update={"token": token})})
