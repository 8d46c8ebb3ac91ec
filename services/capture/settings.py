"""Options of the capture service (env: RLHF_CAPTURE__<OPTION>)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

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
        default=None, description="key the proxy sends upstream (e.g. RLHF_POLICY_SERVER__API_KEY, vLLM --api-key)",
    )
    proxy_auth: Literal["token", "passthrough"] = Field(
        default="token",
        description="token: callers present the capture token and the proxy presents proxy_upstream_api_key; "
        "passthrough: the caller's Authorization goes upstream unchanged and the upstream decides (only for an "
        "upstream that checks keys itself)",
    )
    proxy_timeout_s: float = Field(default=600.0, gt=0, description="upstream read timeout")
    proxy_model_version: str = Field(
        default="unknown", min_length=1, max_length=200,
        description="model version stamped on proxied candidates unless X-RLHF-Model-Version says",
    )
    proxy_queue_size: int = Field(default=10_000, ge=1, description="captures waiting for the broker")

    @model_validator(mode="after")
    def _one_upstream_credential(self) -> "CaptureOptions":
        if self.proxy_auth == "passthrough" and self.proxy_upstream_api_key is not None:
            raise ValueError("proxy_upstream_api_key is never sent with proxy_auth=passthrough: "
                             "unset RLHF_CAPTURE__PROXY_UPSTREAM_API_KEY or use proxy_auth=token")
        return self

    @field_validator("proxy_upstream_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url


class CaptureSettings(ServiceSettings):
    """Env: RLHF_CAPTURE__TOKEN, RLHF_CAPTURE__AUTH_DISABLED, ... plus the common RLHF_* ones."""

    capture: CaptureOptions = CaptureOptions()
