"""Where training runs, decided once per run: CUDA when present, else CPU.

TRL configs default to bf16 and gradient checkpointing even on CPU, which makes tiny
CPU runs 3-4x slower; these are the arguments every TRL config here gets.
"""

from __future__ import annotations

from typing import Any, Literal


def resolve_device(wanted: Literal["auto", "cpu", "cuda"] = "auto") -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def trl_common_args(device: str) -> dict[str, Any]:
    import torch

    on_gpu = device == "cuda"
    return {
        "bf16": bool(on_gpu and torch.cuda.is_bf16_supported()),
        "gradient_checkpointing": False,
        "use_cpu": not on_gpu,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
    }
