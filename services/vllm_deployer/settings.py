from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from shared.settings import ServiceSettings


class VllmDeployerOptions(BaseModel):
    base_urls: list[str] = Field(default_factory=list, description="vLLM servers, e.g. [\"http://vllm:8000\"]")
    api_key: SecretStr | None = None
    adapter_root: str = Field(default="", description="registry path as the vLLM pods see it (shared volume)")
    keep_versions: int = Field(default=2, ge=1, description="adapters kept loaded (newest promoted first)")
    timeout_s: float = Field(default=60.0, gt=0)
    group_id: str = "vllm-deployer"


class VllmDeployerSettings(ServiceSettings):
    vllm_deployer: VllmDeployerOptions = VllmDeployerOptions()
