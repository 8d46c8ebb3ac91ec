from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from shared.contracts.tasks import MAX_RANKED, MIN_RANKED
from shared.settings import ServiceSettings

GUIDELINES_DIR = Path(__file__).resolve().parent / "guidelines"
DEFAULT_COMPARISON_DATASET = "rlhf-canary-ab"


class AnnotationOptions(BaseModel):
    argilla_url: str = Field(
        default="", description="Argilla server URL; empty = start an embedded Argilla under DATA_DIR/argilla"
    )
    api_key: SecretStr = Field(default=SecretStr(""), description="owner/admin API key (from a Secret)")
    workspace: str = Field(default="rlhf", min_length=1)
    dataset: str = Field(
        default="rlhf-rankings", min_length=1, max_length=100,
        description="dataset name prefix; one dataset per candidate count: '<dataset>-<k>'",
    )
    min_submitted: int = Field(default=1, ge=1, le=20, description="annotators per record (Argilla distribution)")
    guidelines_path: Path = Field(default=GUIDELINES_DIR / "v1.md", description="markdown shown in Argilla")
    guideline_version: str | None = Field(
        default=None, max_length=64, description="stamped downstream; default: the guidelines file's stem"
    )
    comparison_dataset: str = Field(
        default=DEFAULT_COMPARISON_DATASET, min_length=1, max_length=100,
        description="the dataset of blind canary-vs-stable A/B comparisons (tasks with `ab` set)",
    )
    comparison_guidelines_path: Path = Field(
        default=GUIDELINES_DIR / "comparison-v1.md", description="markdown shown in the comparison dataset")
    comparison_guideline_version: str | None = Field(
        default=None, max_length=64,
        description="stamped on comparisons and their preferences; default: the comparison guidelines file's stem",
    )
    rating_axes: list[str] = Field(
        default_factory=list, description="optional 1-5 rating questions, e.g. [\"helpfulness\",\"harmlessness\"]"
    )
    rationale: bool = Field(default=True, description="ask for an optional free-text rationale")
    group_id: str = "annotation"
    poll_interval_s: float = Field(default=5.0, gt=0, description="how often completed records are collected")
    poll_overlap_s: float = Field(
        default=10.0, ge=0, description="re-read this far behind the watermark (clock skew, late commits)"
    )
    rescan_interval_s: float = Field(
        default=300.0, ge=0,
        description="re-read completed records this often (when the dataset saw activity): catches edited "
                    "rankings without webhooks (Argilla keeps an edited record's updated_at)",
    )
    rescan_window_s: float = Field(
        default=7 * 24 * 3600.0, ge=0, description="the rescan reads records updated this far back; 0 = all",
    )
    page_size: int = Field(default=200, ge=1, le=1000)
    request_timeout_s: float = Field(default=15.0, gt=0)
    webhooks: bool = Field(default=True, description="receive Argilla webhooks to collect within ~1 s of a submit")
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=0, ge=0, le=65535, description="listener port; 0 picks a free one")
    webhook_url: str = Field(
        default="", description="URL Argilla calls; empty = http://127.0.0.1:<port>/webhooks/argilla (same host)"
    )
    suggest_rankings: bool = Field(
        default=False, description="show the promoted reward model's ranking (and scores) as an Argilla suggestion")
    registry_dir: str = Field(default="", description="where the promoted reward model is found; default DATA_DIR/registry")
    annotators: list[str] = Field(
        default_factory=lambda: ["annotator-1", "annotator-2"],
        description="embedded mode only: annotator accounts to create (passwords in DATA_DIR/argilla/credentials.json)",
    )

    @field_validator("rating_axes")
    @classmethod
    def _axis_names(cls, axes: list[str]) -> list[str]:
        for axis in axes:
            if not axis.replace("_", "").isalnum() or not axis.islower():
                raise ValueError(f"rating axis {axis!r}: use lowercase letters, digits and '_'")
        return axes

    @model_validator(mode="after")
    def _distinct_datasets(self) -> "AnnotationOptions":
        # the ranking datasets are '<dataset>-<k>': sharing a name would mix blind
        # comparisons (no task in the record) into a ranking dataset's layout
        if self.comparison_dataset in {f"{self.dataset}-{k}" for k in range(MIN_RANKED, MAX_RANKED + 1)}:
            raise ValueError(f"comparison_dataset {self.comparison_dataset!r} is one of the ranking datasets")
        return self

    @property
    def version(self) -> str:
        return self.guideline_version or self.guidelines_path.stem

    @property
    def comparison_version(self) -> str:
        """The comparison guidelines' version, derived as `version` is."""
        return self.comparison_guideline_version or self.comparison_guidelines_path.stem


class AnnotationSettings(ServiceSettings):
    """Env: RLHF_ANNOTATION__ARGILLA_URL, RLHF_ANNOTATION__API_KEY, ... plus the common RLHF_* ones."""

    annotation: AnnotationOptions = AnnotationOptions()
