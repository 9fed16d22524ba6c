"""One process or many (``torchrun``): the process group, the device, and a resumable sampler.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; the process group uses NCCL on GPUs and gloo on the CPU. Without them
training runs in this one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from training.config import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Join the ``torchrun`` process group if there is one, and choose this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("train.device (--device): cuda was asked for, but torch sees no GPU here")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, device_id=chosen if use_cuda else None)
    return Context(rank, world_size, local_rank, chosen)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, context: Context) -> list[Any]:
    """``obj`` of every rank, in rank order (every rank must call this)."""
    if not context.distributed:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_over_ranks(values: dict[str, float], context: Context) -> dict[str, float]:
    """Per-key means of scalars over the ranks (every rank must call this with the same keys)."""
    if not context.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / context.world_size).tolist(), strict=True))


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way: after :meth:`set_position`
    with the number of samples the ranks together have already taken in this epoch, it yields
    the rest of this rank's share. The epoch's shuffle depends only on ``seed`` and the epoch,
    and rank ``r`` takes every ``world_size``-th sample of it from position ``r``, so the
    samples of a global batch are the same whatever the number of processes it is split over.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def set_position(self, epoch: int, samples_taken: int) -> None:
        if samples_taken % self.num_replicas:
            raise ValueError(
                f"samples_taken: {samples_taken} is not a multiple of the {self.num_replicas} processes"
            )
        self.set_epoch(epoch)
        self.skip = min(samples_taken // self.num_replicas, self.num_samples)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip
