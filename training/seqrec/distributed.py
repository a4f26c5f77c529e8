"""torch.distributed for the sequential trainer: one process per device under torchrun (gloo on a CPU, NCCL on
GPUs); every rank trains its share of each batch, rank 0 alone validates, checkpoints and registers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class LaunchConfig:
    """How a stage is run. The single home of its defaults."""

    nproc: int = 1  # processes under torchrun (one per GPU, or CPU processes with gloo), through Dagster Pipes;
    # 1: train in the calling process


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR...) and return this rank's
    device: cuda:LOCAL_RANK with NCCL where CUDA is present, else the CPU with gloo. Without torchrun: `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu"


def shard_batches(batches: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor]:
    """This rank's rows of each global batch (rows rank, rank + W, ...: similar lengths on every rank), a batch
    smaller than W padded by repeating its rows as DistributedSampler pads; every rank takes the same steps."""
    return batches if world == 1 else [global_batch(b, world)[rank::world] for b in batches]


def global_batch(batch: torch.Tensor, world: int) -> torch.Tensor:
    """A global batch padded to at least W rows by repeating its rows (all ranks' rows together)."""
    return batch if world == 1 else batch.repeat(math.ceil(world / len(batch)))[: max(len(batch), world)]


def broadcast(obj):
    """Rank 0's value on every rank (its validation verdicts, so that all ranks stop together)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of per-rank epoch averages (losses)."""
    if rank_and_world()[1] == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, (t / rank_and_world()[1]).tolist()))


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


class LossModule(nn.Module):
    """What DDP wraps: its forward is the model's own `calculate_loss`, so DDP sees the whole training graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, seq, targets, mask_seen, objective):
        return self.model.calculate_loss(seq, targets, mask_seen, objective, return_scores=True)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model's loss when a process group of 2+ ranks is up, else the loss."""
    module = LossModule(model)
    if rank_and_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
