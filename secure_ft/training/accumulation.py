"""Gradient accumulation for non-private runs: one optimizer step per logical batch, computed in pieces.

A logical batch of 1024 rows padded to its longest sentence needs the memory of 1024 full-length
rows at once; pieces of 32 rows each trimmed to their own longest sentence need far less memory
and, on CPU, less time. The step is the same: each piece's mean loss is weighted by its share of
the logical batch before `backward` (`TrainingEngine.loss_weight`), so the summed gradients equal
the gradient of the logical batch's mean loss, and clipping and the optimizer step happen once,
after the last piece. (DP runs split their batches with Opacus' BatchMemoryManager instead, see
`secure_ft.privacy.engine`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


class AccumulatingOptimizer(torch.optim.Optimizer):
    """Wraps an optimizer so that `step` / `zero_grad` act only after the last piece of a logical batch.

    A subclass (as Opacus' DPOptimizer is) so learning-rate schedulers accept it; its state is
    the wrapped `original_optimizer`'s (Opacus' name, so hooks placed on the torch optimizer,
    such as FedProx's, find it).
    """

    def __init__(self, optimizer: torch.optim.Optimizer):  # no super().__init__: nothing of its own to hold
        self.original_optimizer = optimizer
        self.last_piece = True  # both set by `pieces` before each piece is trained on
        self.share = 1.0

    @property
    def param_groups(self):
        return self.original_optimizer.param_groups

    @property
    def state(self):
        return self.original_optimizer.state

    @property
    def defaults(self):
        return self.original_optimizer.defaults

    def state_dict(self):
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group) -> None:
        self.original_optimizer.add_param_group(param_group)

    def step(self, closure=None):
        return self.original_optimizer.step(closure) if self.last_piece else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.last_piece:
            self.original_optimizer.zero_grad(set_to_none=set_to_none)


def pieces(batches: Iterable, max_rows: int, optimizer: AccumulatingOptimizer) -> Iterator[list[torch.Tensor]]:
    """Split each logical batch into pieces of at most `max_rows`, telling the optimizer where they are."""
    for batch in batches:  # a plain DataLoader's batches are never empty
        rows = len(batch[-1])
        for start in range(0, rows, max_rows):
            piece = [tensor[start:start + max_rows] for tensor in batch]
            optimizer.last_piece = start + max_rows >= rows
            optimizer.share = len(piece[-1]) / rows
            yield piece
