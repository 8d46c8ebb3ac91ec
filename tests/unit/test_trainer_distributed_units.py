"""How the ranks of a multi-process run split and rejoin work (services/trainer/
distributed.py), on real gloo process groups: head-mode features computed in two
shards equal the single-process ones, row for row, and the launch command is what
`accelerate launch` takes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from services.trainer.distributed import Ranks, launch_command
from tests.trainer_support import make_preference

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_once_in_order(n: int, world: int) -> None:
    blocks = [list(Ranks(rank, world).shard(n)) for rank in range(world)]
    assert [i for block in blocks for i in block] == list(range(n))


def test_one_process_needs_no_launcher(tmp_path: Path) -> None:
    assert launch_command(tmp_path / "job.json", num_processes=1) == [
        sys.executable, "-m", "services.trainer.run_job", str(tmp_path / "job.json")]


def test_two_processes_are_launched_by_accelerate_with_a_rendezvous(tmp_path: Path) -> None:
    command = launch_command(tmp_path / "job.json", num_processes=2, port=29777)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--num_processes"] == "2" and flags["--main_process_port"] == "29777"
    assert flags["--main_process_ip"] == "127.0.0.1" and "--multi_gpu" in command
    assert command[-3:] == ["-m", "services.trainer.run_job", str(tmp_path / "job.json")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(store_path: str) -> list:  # type: ignore[type-arg]
    from services.trainer.store import PreferenceStore

    store = PreferenceStore(store_path)
    try:
        return store.preferences_upto(store.max_seq())
    finally:
        store.close()


def _features_on_rank(rank: int, world: int, port: int, backbone: str, out: str, store_path: str) -> None:
    import torch.distributed as dist

    from services.trainer.reward_model import preference_features
    from shared.models.reward import RewardModel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ranks = Ranks(rank, world)
        model = RewardModel.frozen_backbone(backbone, 0, "cpu", 64)
        chosen, rejected = preference_features(model, _rows(store_path), None, ranks)
        assert ranks.broadcast({"from": rank})["from"] == 0
        torch.save({"chosen": chosen, "rejected": rejected}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sharded_features_equal_single_process_features(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    from services.trainer.reward_model import preference_features
    from services.trainer.store import PreferenceStore
    from shared.models.reward import RewardModel

    store_path, out = str(tmp_path / "store.sqlite"), str(tmp_path / "features")
    store = PreferenceStore(store_path)
    for i in range(9):  # 18 answers: the ranks compute 9 each
        store.add_preference(make_preference(i))
    store.close()
    mp.spawn(_features_on_rank, args=(2, _free_port(), str(tiny_models[1]), out, store_path), nprocs=2, join=True)
    model = RewardModel.frozen_backbone(str(tiny_models[1]), 0, "cpu", 64)
    chosen, rejected = preference_features(model, _rows(store_path), None)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        assert got["chosen"].shape == chosen.shape == (9, chosen.shape[1])
        torch.testing.assert_close(got["chosen"], chosen)
        torch.testing.assert_close(got["rejected"], rejected)
