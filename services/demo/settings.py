from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.settings import ServiceSettings


class DemoOptions(BaseModel):
    policy_url: str = Field(default="http://127.0.0.1:9104/v1", description="the policy server's OpenAI base URL")
    model: str = "rlhf-policy"
    requests_per_s: float = Field(default=0.5, gt=0, description="replayed chat requests per second")
    candidates: int = Field(default=2, ge=2, le=5, description="n answers asked per prompt")
    max_tokens: int = Field(default=24, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    replay: bool = True
    simulated_annotators: bool = Field(default=True, description="off: a person ranks in the Argilla UI")
    oracle: Literal["length", "distinct_words"] = Field(
        default="length", description="the annotators' hidden preference")
    noise: float = Field(default=0.0, ge=0, description="oracle noise, in units of its score")
    annotator_delay_s: float = Field(default=0.2, ge=0, description="reading time per record")
    argilla_dir: str = Field(default="", description="embedded Argilla's data dir; default DATA_DIR/argilla")


class DemoSettings(ServiceSettings):
    demo: DemoOptions = DemoOptions()
