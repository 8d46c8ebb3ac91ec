"""A run on more than one process: who is rank 0, and how the ranks agree.

With `RLHF_TRAINER__NUM_PROCESSES` (or `__NUM_NODES`) above 1 the executor starts the
job under `accelerate launch` (launch_command), and every process runs the same
`TrainingRun`. The reward model and the policy train on all of them (TRL's trainers
shard the data across ranks: DDP by default, FSDP or DeepSpeed by an accelerate
config file); head-mode feature extraction is sharded here. Everything with a side
effect is rank 0's alone — the registry, the run's events, the evaluation — and the
other ranks learn its decisions (the snapshot, the versions it read or published,
the gate) by broadcast, never by reading shared state at a slightly different time.
The run lock and its heartbeat stay with the coordinator (the trainer service), as
for a single process.

A failure on any rank ends the run: `accelerate launch` (torchrun) stops the other
ranks when one exits non-zero, the launcher exits non-zero, and the coordinator
records the run as failed as it does for a job that died.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @classmethod
    def from_launcher(cls, device: str) -> Ranks:
        """The ranks a launcher set up (torchrun's RANK/WORLD_SIZE), with the process
        group initialised through accelerate's state: gloo on CPU, NCCL on GPUs. TRL's
        trainers reuse that same state. Without a launcher: one process."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls.single()
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return cls(rank=state.process_index, world_size=state.num_processes)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, n: int) -> range:
        """This rank's share of `n` items: a contiguous block, so gathering keeps order."""
        per = -(-n // self.world_size) if n else 0
        return range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def gather_rows(self, rows: Any, n: int) -> Any:
        """Every rank's block of rows (a tensor from `shard(n)`), in order, on every rank."""
        if not self.distributed:
            return rows
        import torch
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, rows.cpu())
        blocks = [p for p in parts if p is not None and len(p)]
        return torch.cat(blocks) if blocks else rows


def launch_command(job_file: Path, *, num_processes: int, num_nodes: int = 1, config_file: str = "", machine_rank: str = "0", main_address: str = "127.0.0.1",
                   port: int = 29500, python: str = sys.executable) -> list[str]:
    """The job's command line: plain `python -m services.trainer.run_job` for one
    process, else the same module under `accelerate launch` with the rendezvous set.
    `machine_rank` is a string so a Kubernetes pod can pass `$(JOB_COMPLETION_INDEX)`.

    Without a config file the launch is DDP through torchrun (`--multi_gpu`, which on a
    machine without GPUs still starts N processes: each rank's accelerate state then
    picks gloo, as `--cpu` alone would start a single process)."""
    job = ["-m", "services.trainer.run_job", str(job_file)]
    if num_processes * num_nodes <= 1:
        return [python, *job]
    launch = [python, "-m", "accelerate.commands.launch"]
    if config_file:
        launch += ["--config_file", config_file]
    launch += ["--num_processes", str(num_processes * num_nodes), "--num_machines", str(num_nodes),
               "--machine_rank", machine_rank, "--main_process_ip", main_address, "--main_process_port", str(port)]
    if not config_file:
        launch += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, *job]


def shard_list(ranks: Ranks, items: Sequence[T]) -> list[T]:
    return [items[i] for i in ranks.shard(len(items))]
