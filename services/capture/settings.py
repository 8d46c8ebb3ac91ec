"""Options of the capture service (env: RLHF_CAPTURE__<OPTION>)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator

from shared.settings import ServiceSettings


class CaptureOptions(BaseModel):
    token: SecretStr | None = Field(
        default=None,
        description="bearer token clients must send; unset and auth enabled: one is "
        "generated into DATA_DIR/capture/token (embedded mode)",
    )
    auth_disabled: bool = Field(default=False, description="accept requests without a token (local use only)")
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_batch_items: int = Field(default=500, ge=1, le=10_000)
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="how long a request waits for the broker's ack before 503"
    )
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After of a 503")
    # OpenAI-compatible proxy: on when an upstream is set.
    proxy_upstream_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. http://vllm:8000/v1; enables the proxy"
    )
    proxy_upstream_api_key: SecretStr | None = Field(
        default=None,
        description="key sent upstream; when set, callers authenticate to the proxy with the capture token",
    )
    proxy_timeout_s: float = Field(default=600.0, gt=0, description="upstream read timeout")
    proxy_model_version: str = Field(
        default="unknown", min_length=1, max_length=200,
        description="model version stamped on proxied candidates unless X-RLHF-Model-Version says",
    )
    proxy_queue_size: int = Field(default=10_000, ge=1, description="captures waiting for the broker")

    @field_validator("proxy_upstream_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url


class CaptureSettings(ServiceSettings):
    """Env: RLHF_CAPTURE__TOKEN, RLHF_CAPTURE__AUTH_DISABLED, ... plus the common RLHF_* ones."""

    capture: CaptureOptions = CaptureOptions()
