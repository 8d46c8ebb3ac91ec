from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from shared.settings import ServiceSettings


class DemoOptions(BaseModel):
    policy_url: str = Field(default="http://127.0.0.1:9104/v1", description="the policy server's OpenAI base URL")
    policy_api_key: SecretStr | None = Field(
        default=None, description="the policy server's key (`rlhf-loop up` passes the one it serves with)")
    model: str = "rlhf-policy"
    requests_per_s: float = Field(default=0.5, gt=0, description="replayed chat requests per second (at most)")
    candidates: int = Field(default=5, ge=2, le=5, description="n answers asked per prompt (ranked together)")
    max_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    replay: bool = True
    simulated_annotators: bool = Field(default=True, description="off: a person ranks in the Argilla UI")
    oracle: Literal["concise", "length", "distinct_words"] = Field(
        default="concise", description="the annotators' hidden preference")
    noise: float = Field(default=0.0, ge=0, description="oracle noise, in units of its score")
    annotator_delay_s: float = Field(default=0.2, ge=0, description="reading time per record")
    argilla_dir: str = Field(default="", description="embedded Argilla's data dir; default DATA_DIR/argilla")
    probe: bool = Field(default=True, description="measure the served version vs the base on held-out prompts")
    eval_prompts: int = Field(default=32, ge=1, le=128, description="held-out prompts per measurement")
    eval_check_interval_s: float = Field(default=10.0, gt=0, description="how often the probe looks for a new version")
    trainer_url: str = Field(default="", description="the trainer's HTTP base URL (for pause_while_training)")
    pause_while_training: bool = Field(
        default=True, description="replay and probe hold while a training run uses the CPU (a laptop has 2 cores)")


    def policy_headers(self) -> dict[str, str]:
        """What every request to the policy server carries."""
        return {"Authorization": f"Bearer {self.policy_api_key.get_secret_value()}"} if self.policy_api_key else {}


class DemoSettings(ServiceSettings):
    demo: DemoOptions = DemoOptions()
