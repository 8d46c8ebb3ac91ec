"""Where a candidate policy starts: from the promoted version's adapter (the loop
builds on what it learned), or from a fresh LoRA adapter over the base when there is
no promoted version or its adapter does not fit the configured LoRA shape.

The KL reference is the base model (the adapter disabled: stay near the original
model) or the incumbent (`reference="previous"`: a trust region around the promoted
version, loaded once more as a frozen adapter named `ref`, the name TRL's GRPO and
RLOO look for and PPO/DPO are told).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..distributed import Ranks
from .base import PolicyTrainConfig, lora_config

log = logging.getLogger(__name__)

TRAINED_ADAPTER = "default"
REFERENCE_ADAPTER = "ref"


@dataclass(frozen=True)
class PolicyStart:
    model: Any  # a PeftModel with the trainable adapter active
    init: str  # "fresh" or "continued"
    note: str
    reference_adapter: str | None  # set when the KL reference is an adapter


def adapter_fits(adapter_dir: Path, config: PolicyTrainConfig) -> tuple[bool, str]:
    """The saved adapter can keep training under the configured LoRA shape."""
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    hyper = config.hyper
    if saved.get("r") != hyper.lora_r or saved.get("lora_alpha") != hyper.lora_alpha:
        return False, (f"adapter r={saved.get('r')}, alpha={saved.get('lora_alpha')} differs from the configured "
                       f"r={hyper.lora_r}, alpha={hyper.lora_alpha}")
    return True, ""


def load_policy(config: PolicyTrainConfig, load_reference: bool = True) -> PolicyStart:
    """`load_reference=False`: the trainer makes its own reference adapter (TRL's
    GRPO/RLOO copy the starting adapter to `ref` themselves)."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(config.base_model)
    start = Path(config.init_adapter) if config.init_adapter else None
    fits, why = adapter_fits(start, config) if start else (False, "no promoted policy yet")
    if start is not None and fits:
        model = PeftModel.from_pretrained(base, str(start), adapter_name=TRAINED_ADAPTER, is_trainable=True)
        init, note = "continued", f"continued from {start.name}"
    else:
        model = get_peft_model(base, lora_config(config.hyper), adapter_name=TRAINED_ADAPTER)
        init, note = "fresh", f"fresh adapter ({why})"
        if start is not None:
            log.warning("policy starts from a fresh adapter: %s", why)
    reference = None
    if load_reference and config.reference == "previous" and start is not None:
        model.load_adapter(str(start), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter(TRAINED_ADAPTER)
        reference = REFERENCE_ADAPTER
    return PolicyStart(model, init, note, reference)


def settle_reference(model: Any, reference: str) -> None:
    """TRL's DPO, GRPO and RLOO copy a pretrained adapter to `ref` and measure KL
    against that copy (the starting point). With `reference="base"` the copy goes,
    and TRL falls back to the adapters-disabled base."""
    if reference == "base" and REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def trainable_adapter_only(model: Any) -> None:
    """Drop the reference adapter before saving: a version is one adapter."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def save_adapter(model: Any, output_dir: Path, ranks: Ranks | None = None) -> None:
    """The trained adapter's files at the top of `output_dir` (what the policy server
    and vLLM load), and nothing of the trainer's scratch. Rank 0 writes (every rank
    holds the same weights after DDP); the others wait until the files are complete."""
    import shutil

    ranks = ranks or Ranks.single()
    if ranks.is_main:
        trainable_adapter_only(model)
        model.save_pretrained(str(output_dir), selected_adapters=[TRAINED_ADAPTER])
        shutil.rmtree(output_dir / "_trainer", ignore_errors=True)
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        (output_dir / "README.md").unlink(missing_ok=True)  # PEFT's generated model card: the manifest says more
    ranks.barrier()
