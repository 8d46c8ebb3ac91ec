"""The one registry reader: what a pointer may name, when a version is complete, and
that the writer and every service read the same way; and that a reward model is read
back at the token cap it was trained at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.trainer.registry import ModelRegistry
from shared.models.reward import DEFAULT_MAX_LENGTH, RewardModel, recorded_max_length
from shared.models.reward_scorer import registry_locator
from shared.registry_reader import RegistryReader, version_number


def point(root: Path, kind: str, version: object, name: str = "promoted") -> None:
    (root / kind).mkdir(parents=True, exist_ok=True)
    (root / kind / f"{name}.json").write_text(json.dumps({"version": version}))


def test_a_pointer_names_only_complete_versions_with_registry_names(tmp_path: Path) -> None:
    reader = RegistryReader(tmp_path / "never-written")
    assert reader.pointer("policy", "promoted") is None and reader.versions("policy") == []
    assert not (tmp_path / "never-written").exists()  # a reader creates nothing

    registry = ModelRegistry(tmp_path / "registry")
    staged = registry.staging("run1", "policy")
    (staged / "adapter_model.safetensors").write_bytes(b"x")
    version = registry.publish("policy", staged, {"run_id": "run1"})
    registry.set_pointer("policy", "promoted", version)
    reader = RegistryReader(tmp_path / "registry")
    assert reader.pointer("policy", "promoted") == registry.pointer("policy", "promoted") == version
    assert reader.pointed_path("policy", "promoted") == tmp_path / "registry" / "policy" / version
    assert reader.manifest("policy", version)["run_id"] == "run1" and reader.versions("policy") == [version]

    (tmp_path / "registry" / "policy" / "policy-v0002").mkdir()  # copied, manifest not yet there
    point(tmp_path / "registry", "policy", "policy-v0002")
    assert reader.pointer("policy", "promoted") is None and reader.versions("policy") == [version]
    outside = tmp_path / "elsewhere"
    (outside / "manifest.json").parent.mkdir()
    (outside / "manifest.json").write_text("{}")
    for name in ["../../elsewhere", "rm-v0001", "policy-v1", 7, None]:  # never a path out of policy/
        point(tmp_path / "registry", "policy", name)
        assert reader.pointer("policy", "promoted") is None, name
    assert version_number("policy", "policy-v0012") == 12 and version_number("reward", "policy-v0012") is None


def test_a_corrupt_pointer_raises_for_the_caller_to_judge(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "promoted.json").write_text("{not json")
    with pytest.raises(ValueError):
        RegistryReader(tmp_path).pointer("policy", "promoted")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.trainer.tiny_models import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("base") / "policy")


def test_a_reward_model_is_read_at_the_cap_it_was_trained_at(tmp_path: Path, tiny_base: Path) -> None:
    backbone = RewardModel.frozen_backbone(tiny_base, max_length=40)
    torch.manual_seed(0)
    backbone.save_head(tmp_path / "rm", torch.randn(backbone.head.hidden_size))  # type: ignore[union-attr]
    assert recorded_max_length(tmp_path / "rm") == 40
    assert RewardModel.load(tmp_path / "rm").max_length == 40
    assert RewardModel.load(tmp_path / "rm", max_length=64).max_length == 64  # an explicit cap still wins

    (tmp_path / "rm" / "rendering.json").unlink()  # published before versions recorded it
    assert recorded_max_length(tmp_path / "rm") is None
    assert RewardModel.load(tmp_path / "rm").max_length == DEFAULT_MAX_LENGTH
    (tmp_path / "rm" / "manifest.json").write_text(json.dumps({"hyperparameters": {"max_length": 48}}))
    assert RewardModel.load(tmp_path / "rm").max_length == 48  # the trainer's manifest says


def test_the_scorer_follows_the_pointer_through_the_shared_reader(tmp_path: Path, tiny_base: Path) -> None:
    locate = registry_locator(tmp_path)
    assert locate() is None
    backbone = RewardModel.frozen_backbone(tiny_base, max_length=40)
    backbone.save_head(tmp_path / "reward" / "rm-v0001", torch.zeros(backbone.head.hidden_size))  # type: ignore[union-attr]
    point(tmp_path, "reward", "rm-v0001")
    assert locate() is None  # no manifest: not published yet
    (tmp_path / "reward" / "rm-v0001" / "manifest.json").write_text("{}")
    assert locate() == tmp_path / "reward" / "rm-v0001"
    point(tmp_path, "reward", "../reward/rm-v0001")  # the same directory, but not a version name
    assert locate() is None
