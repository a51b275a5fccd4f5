"""Poisson sampling shared by several processes: one global batch, each process its share.

Opacus' own distributed sampler lets each process sample its shard with its own draws and
*skips* a process's empty batch, which leaves the processes out of step (one waits forever
in the all-reduce). `ShardedPoissonBatchSampler` instead draws the global Poisson batch with
the same seeded generator on every process (each example joins with probability q,
independently) and deals the chosen examples out round-robin, so every process takes every
step, possibly with zero examples. The union of the shards is exactly the single-process
batch: a 2-process run sees the same batches as a 1-process run with the same seed, and ε
(computed from the global q, σ and steps) is the same.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ShardedPoissonBatchSampler(Sampler[list[int]]):
    """This process's share of a global Poisson-sampled batch, `steps` batches per epoch.

    Every process must hold an identically seeded `generator`; process `rank` of
    `world_size` receives the chosen indices ``chosen[rank::world_size]``.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, generator: torch.Generator, rank: int,
                 world_size: int, steps: int | None = None):
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.steps = steps if steps is not None else int(1 / sample_rate)  # as Opacus' Poisson sampler

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            chosen = mask.nonzero(as_tuple=False).reshape(-1)
            yield chosen[self.rank::self.world_size].tolist()


def sharded_poisson_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """A loader over `loader`'s dataset that yields this process's share of each Poisson batch.

    The sampling probability is that of Opacus' single-process `DPDataLoader` built from
    `loader` (1 / len(loader)); the loader's generator drives it (and is reseeded per epoch
    by the training loop), so that all processes draw the same global batches.
    """
    from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
    from torch.utils.data._utils.collate import default_collate

    if loader.generator is None:
        raise ValueError("the training loader needs a seeded generator for distributed Poisson sampling")
    dataset = loader.dataset
    sampler = ShardedPoissonBatchSampler(num_samples=len(dataset), sample_rate=1 / len(loader),
                                         generator=loader.generator, rank=rank, world_size=world_size)
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=loader.collate_fn or default_collate,
                                      sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                                      dtypes=[dtype_safe(x) for x in first])
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=loader.generator,
                      num_workers=0)
