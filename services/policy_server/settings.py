from __future__ import annotations

import socket

from pydantic import BaseModel, Field, SecretStr

from shared.settings import ServiceSettings


class PolicyServerOptions(BaseModel):
    base_model: str = Field(default="", description="base policy directory; default MODELS_DIR/smollm2-135m-instruct")
    registry_dir: str = Field(default="", description="default DATA_DIR/registry")
    served_model_name: str = Field(default="rlhf-policy", min_length=1)
    max_tokens_default: int = Field(default=64, ge=1)
    max_tokens_limit: int = Field(default=512, ge=1)
    max_n: int = Field(default=5, ge=1, le=16)
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description="rows (a request is n rows) generated together in one batch; 1 = one "
        "request at a time (no batching)")
    batch_window_ms: float = Field(
        default=25.0, ge=0, le=1000, description="how long the oldest queued request waits for others to join its "
        "batch; requests arriving while a batch runs join the next one anyway")
    batch_gap_ms: float = Field(
        default=3.0, ge=0, le=1000, description="but no longer than this after the latest arrival: a burst is "
        "collected while it keeps arriving, a lone request does not wait out the window")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="larger request bodies get 413")
    capture: bool = Field(default=True, description="capture every completion to rlhf.outputs")
    canary_seed: int | None = Field(default=None, description="fixes the canary draw (tests, replays)")
    canary_graduate_after_s: float = Field(
        default=0.0, ge=0, description="a healthy canary takes all traffic after this long; 0 = never (the default: "
        "the trainer's canary judge decides from blind A/B comparisons, with its own timeout; set it only where "
        "no judge runs)")
    ab_share: float = Field(
        default=0.2, ge=0, le=1, description="share of captured n=1 requests to the served name that, while a "
        "canary serves, the other version (canary or stable) answers too, after the response, for a blind A/B "
        "comparison; the user gets only the routed answer")
    ab_seed: int | None = Field(default=None, description="fixes the A/B draw (tests, replays); default canary_seed")
    ab_max_pending: int = Field(
        default=32, ge=1, description="A/B answers waiting to be generated; beyond it a pick is shed (its served "
        "answer captured alone) so the extra generation never grows without bound")
    canary_fraction: float = Field(
        default=0.1, ge=0, le=1,
        description="share a promoted version found by reconciling with the registry starts with (its event was lost)")
    api_key: SecretStr | None = Field(
        default=None, description="bearer key every /v1 request must carry (the OpenAI SDK's api_key), from a "
        "Secret; unset and auth enabled: one is generated into DATA_DIR/policy-server/api-key (0600)")
    auth_disabled: bool = Field(default=False, description="serve /v1 without a key (local use only)")
    health_check_prompt: str = "Say hello."
    group_id: str = Field(default_factory=lambda: f"policy-server-{socket.gethostname()}",
                          description="own group per replica: every replica sees every model update")
    dead_letter_topic: str = Field(
        default="rlhf.dlq.policy-server",
        description="one topic for every replica's dead letters (the groups are per pod; the topic is declared)")


class PolicyServerSettings(ServiceSettings):
    """Env: RLHF_POLICY_SERVER__BASE_MODEL, RLHF_POLICY_SERVER__CANARY_SEED, ..."""

    policy_server: PolicyServerOptions = PolicyServerOptions()
