"""Augmentation multiplicity under DP-SGD: one clipped gradient per example, averaged over its copies.

De et al. 2022 ("Unlocking High-Accuracy Differentially Private Image Classification through
Scale") train each example together with K augmented copies and take, as the example's
per-sample gradient, the MEAN of the K + 1 gradients, BEFORE clipping:

    ḡ_i = 1/(K+1) Σ_k ∇ℓ(x_ik),      clipped: c_i ḡ_i with c_i = min(1, C / ‖ḡ_i‖)

Each example still adds exactly one row of norm ≤ C to the noisy sum, and the copies of x_i
depend on x_i alone (`secure_ft.text.augmentation`), so the sensitivity, the Poisson sampling of
*examples* and hence ε are those of plain DP-SGD. (Clipping every copy separately would let
one example add K + 1 rows: (K + 1)× the sensitivity.)

The pieces, all outside the engine itself:

* data: `stack_copies` gives a dataset of N items whose tensors carry a copy axis (N, G, …),
  G = K + 1; Opacus' Poisson sampler draws examples; `collate_copies` flattens a batch to
  (B·G, …) rows with each example's copies next to each other.
* book-keeping clipping: `GroupedBookKeepingModule` + `GroupedBookKeepingLoss`. The loss of an
  example is the mean of its copies' losses; before the norms are taken every layer's inputs
  and output gradients are regrouped from (B·G, T, d) to (B, G·T, d), so the book-keeping
  arithmetic sees one "sample" per example whose sequence is its copies' sequences end to end
  — which is exactly the mean gradient, since a layer's weight gradient is a sum over positions.
* Opacus ``hooks`` / ``functorch``: `group_copies_before_clipping` makes a DPOptimizer replace
  every ``p.grad_sample`` (B·G rows, each ∇ℓ_ik under a mean-reduced loss) by its group means
  (B rows) before it clips. Opacus' ``ghost`` mode never materialises rows and is refused.

The optimizer's ``expected_batch_size`` stays the expected number of *examples* (q·N) and
the criterion stays mean-reduced over rows; both are what the engines already use.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.data._utils.collate import default_collate

from secure_ft.errors import PrivacyError
from secure_ft.privacy.bookkeeping_clipping import BookKeepingLoss, BookKeepingModule, BookKeepingTensor


def stack_copies(original: TensorDataset, copies: list[TensorDataset]) -> TensorDataset:
    """One dataset item per example holding the example and its copies: tensors (N, G, …), G = 1 + len(copies).

    ``copies[k]`` must hold copy k of example i at row i (same tensors, same shapes).
    """
    for number, copy in enumerate(copies):
        if len(copy) != len(original) or len(copy.tensors) != len(original.tensors):
            raise PrivacyError(f"augmentation copy {number} has {len(copy)} rows / {len(copy.tensors)} tensors, "
                               f"the training set {len(original)} / {len(original.tensors)}; encode every copy "
                               "of every example with the same tokenizer settings")
    return TensorDataset(*(torch.stack([tensor, *(copy.tensors[t] for copy in copies)], dim=1)
                           for t, tensor in enumerate(original.tensors)))


def copies_per_example(dataset) -> int:
    """G, the rows each item of `dataset` holds: 1 + K for a `stack_copies` dataset, 1 for a plain one.

    Read from the labels (the last tensor): (N,) for plain data, (N, G) once stacked.
    """
    tensors = getattr(dataset, "tensors", None)
    if not tensors or tensors[-1].dim() < 2:
        return 1
    return int(tensors[-1].shape[1])


def collate_copies(items: list) -> list[torch.Tensor]:
    """Collate examples with copies into rows: (B, G, …) → (B·G, …), example i's copies at rows iG…iG+G-1."""
    return [tensor.reshape(-1, *tensor.shape[2:]).contiguous() for tensor in default_collate(items)]


# -- book-keeping ---------------------------------------------------------------------------------

class GroupedBookKeepingModule(BookKeepingModule):
    """Book-keeping clipping with one per-sample gradient per group of `group_size` consecutive rows.

    Use with `GroupedBookKeepingLoss`, which makes each group's loss the mean of its rows'.
    """

    def __init__(self, module: nn.Module, max_grad_norm: float, group_size: int):
        super().__init__(module, max_grad_norm)
        if group_size < 1:
            raise PrivacyError(f"augmentation multiplicity: group size must be ≥ 1, not {group_size}")
        self.group_size = group_size
        for layer in self._layers:
            if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) != 1:
                raise NotImplementedError("grouped book-keeping supports LayerNorm over the last dimension only")

    def clip_and_write_grads(self, batch_size: int) -> torch.Tensor:
        """Regroup every layer's record from rows to examples, then clip per example."""
        for layer, record in self._records.items():
            record.inputs = self._regroup(layer, record.inputs, batch_size, is_input=True)
            if record.grad is not None:
                record.grad = self._regroup(layer, record.grad, batch_size, is_input=False)
        return super().clip_and_write_grads(batch_size)

    def _regroup(self, layer: nn.Module, tensor: torch.Tensor, batch_size: int, is_input: bool) -> torch.Tensor:
        rows = tensor.shape[0]
        if rows != batch_size * self.group_size:
            raise PrivacyError(
                f"augmentation multiplicity: a batch of {rows} rows is not {batch_size} examples × "
                f"{self.group_size} copies; load the data with stack_copies / collate_copies")
        if isinstance(layer, nn.Embedding) and is_input:
            return tensor.reshape(batch_size, -1)  # token ids: (B·G, T) → (B, G·T)
        # (B·G, [T,] d) → (B, G·T, d): one long sequence per example, positions summed like tokens
        return tensor.reshape(batch_size, -1, tensor.shape[-1])


class GroupedBookKeepingLoss(BookKeepingLoss):
    """Per-example loss = mean of the losses of its `group_size` rows (the copies' mean gradient)."""

    def __init__(self, module: GroupedBookKeepingModule, criterion: nn.Module | None = None):
        super().__init__(module, criterion)
        self.group_size = module.group_size

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> BookKeepingTensor:
        per_row = self.criterion(logits, target)
        if len(per_row) % self.group_size:
            raise PrivacyError(f"augmentation multiplicity: {len(per_row)} rows are not whole groups of "
                               f"{self.group_size}; load the data with stack_copies / collate_copies")
        return BookKeepingTensor(self.module, per_row.view(-1, self.group_size).mean(dim=1))


# -- Opacus hooks / functorch -----------------------------------------------------------------------

def group_copies_before_clipping(optimizer, group_size: int):
    """Make an Opacus DPOptimizer average ``p.grad_sample`` over groups of `group_size` rows before it clips.

    Works for the optimizers of the ``hooks`` and ``functorch`` modes (per-sample gradients in
    ``p.grad_sample``), distributed or not. Returns the same optimizer.
    """
    from opacus.optimizers import DPOptimizerFastGradientClipping

    if isinstance(optimizer, DPOptimizerFastGradientClipping):
        raise PrivacyError("augmentation multiplicity: ghost clipping computes norms of single rows only; "
                           "use privacy.grad_sample_mode: bookkeeping (default where supported) or hooks")
    if group_size == 1:
        return optimizer
    clip_rows = optimizer.clip_and_accumulate

    def clip_and_accumulate() -> None:
        for parameter in optimizer.params:
            samples = getattr(parameter, "grad_sample", None)
            if isinstance(samples, list):
                parameter.grad_sample = [group_mean(part, group_size) for part in samples]
            elif samples is not None:
                parameter.grad_sample = group_mean(samples, group_size)
        clip_rows()

    optimizer.clip_and_accumulate = clip_and_accumulate  # pre_step() calls it before noise and scaling
    return optimizer


def group_mean(rows: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B·G, …) → (B, …): the mean over each run of `group_size` consecutive rows."""
    if rows.shape[0] % group_size:
        raise PrivacyError(f"augmentation multiplicity: {rows.shape[0]} per-sample gradient rows are not whole "
                           f"groups of {group_size}; load the data with stack_copies / collate_copies")
    return rows.view(rows.shape[0] // group_size, group_size, *rows.shape[1:]).mean(dim=1)
