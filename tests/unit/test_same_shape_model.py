"""bench/same_shape_model.py: a GPU benchmark run that cannot receive a model's weights
builds one of the same shapes and tokenizer from its small files. The run's ratios are
only meaningful if the shapes, the tokenizer and the generation settings really are
the source's, and the weights really are new."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.same_shape_model import build_same_shape, copy_small_files
from services.trainer.tiny_models import build_tiny_policy


def test_the_small_files_rebuild_a_model_of_the_same_shapes_with_new_weights(tmp_path: Path) -> None:
    source = build_tiny_policy(tmp_path / "source")
    small = copy_small_files(source, tmp_path / "small")
    assert not list(small.glob("*.safetensors")), "the weights must not travel with the small files"

    built = build_same_shape(small, tmp_path / "built", seed=1)

    original = AutoModelForCausalLM.from_pretrained(source)
    rebuilt = AutoModelForCausalLM.from_pretrained(built)
    shapes = {name: tuple(p.shape) for name, p in original.named_parameters()}
    assert {name: tuple(p.shape) for name, p in rebuilt.named_parameters()} == shapes
    assert not all(torch.equal(a, b) for a, b in zip(original.parameters(), rebuilt.parameters(), strict=True))
    assert rebuilt.generation_config.eos_token_id == original.generation_config.eos_token_id
    assert rebuilt.generation_config.pad_token_id == original.generation_config.pad_token_id
    text = "how do I reset my password?"
    assert AutoTokenizer.from_pretrained(built)(text).input_ids == AutoTokenizer.from_pretrained(source)(text).input_ids


def test_a_built_model_is_kept_and_a_stale_half_build_is_replaced(tmp_path: Path) -> None:
    small = copy_small_files(build_tiny_policy(tmp_path / "source"), tmp_path / "small")
    target = tmp_path / "built"
    (tmp_path / ".built.building").mkdir()  # what an interrupted build leaves beside the target
    build_same_shape(small, target)
    first = (target / "model.safetensors").read_bytes()

    build_same_shape(small, target, seed=2)  # already there: not rebuilt

    assert (target / "model.safetensors").read_bytes() == first
    assert not (tmp_path / ".built.building").exists()
