"""Augmentation multiplicity: each example yields one clipped per-sample gradient, the mean over its copies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from secure_ft.errors import PrivacyError
from secure_ft.training.multiplicity import (
    GroupedBookKeepingLoss,
    GroupedBookKeepingModule,
    collate_copies,
    group_copies_before_clipping,
    group_mean,
    stack_copies,
)

EXAMPLES, GROUP, LENGTH = 4, 3, 7  # 4 examples, each with K = 2 copies


def tiny_bert() -> nn.Module:
    """A random 2-layer BERT classifier; no dropout, so rows can be compared one by one."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).train()


def grouped_rows() -> dict[str, torch.Tensor]:
    """B·G rows, each example's copies adjacent: different tokens and lengths, the example's label."""
    generator = torch.Generator().manual_seed(1)
    rows = EXAMPLES * GROUP
    ids = torch.randint(5, 40, (rows, LENGTH), generator=generator)
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones(rows, LENGTH, dtype=torch.long)
    for row in range(rows):
        used = 3 + row % (LENGTH - 2)
        ids[row, used:] = 0  # [PAD]
        mask[row, used:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "position_ids": torch.arange(LENGTH).repeat(rows, 1),
            "labels": torch.tensor([0, 1, 2, 1]).repeat_interleave(GROUP)}


def forward(model: nn.Module, rows: dict[str, torch.Tensor], select=slice(None)) -> torch.Tensor:
    return model(**{name: rows[name][select].contiguous() for name in
                    ("input_ids", "attention_mask", "token_type_ids", "position_ids")}).logits


def direct_mean_gradients(model: nn.Module, rows: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per parameter, (B, *shape): the mean over each example's copies of ∇ℓ(copy), one row at a time."""
    per_row = []
    for row in range(EXAMPLES * GROUP):
        model.zero_grad()
        loss = nn.functional.cross_entropy(forward(model, rows, slice(row, row + 1)), rows["labels"][row:row + 1])
        loss.backward()
        per_row.append([p.grad.detach().clone() for p in model.parameters()])
    return [torch.stack([grads[i] for grads in per_row]).view(EXAMPLES, GROUP, *grads_shape).mean(1)
            for i, grads_shape in enumerate(p.shape for p in model.parameters())]


def norms(gradients: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in gradients], dim=1).norm(dim=1)


@pytest.fixture(scope="module")
def reference():
    model, rows = tiny_bert(), grouped_rows()
    means = direct_mean_gradients(copy.deepcopy(model), rows)
    return model, rows, means


def clip_bound(means: list[torch.Tensor]) -> float:
    return float(norms(means).median())  # about half the examples get clipped


def test_bookkeeping_clips_each_example_once_at_the_mean_of_its_copies(reference):
    model, rows, means = reference
    max_grad_norm = clip_bound(means)
    module = GroupedBookKeepingModule(copy.deepcopy(model), max_grad_norm, GROUP).train()
    loss = GroupedBookKeepingLoss(module)(forward(module, rows), rows["labels"])
    loss.backward()

    expected_norms = norms(means)
    assert module.per_sample_norms.shape == (EXAMPLES,)  # one row per example, not per copy
    torch.testing.assert_close(module.per_sample_norms, expected_norms, rtol=1e-4, atol=1e-6)
    factors = (max_grad_norm / (expected_norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any() and (factors == 1).any()
    assert (norms([factors.view(-1, *[1] * (m.dim() - 1)) * m for m in means]) <= max_grad_norm * (1 + 1e-5)).all()
    for parameter, mean in zip(module._module.parameters(), means):
        torch.testing.assert_close(parameter.grad, torch.einsum("b,b...->...", factors, mean), rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # frozen-input BERT under Opacus hooks
def test_opacus_hooks_average_grad_samples_before_clipping(reference):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model, rows, means = reference
    max_grad_norm = clip_bound(means)
    wrapped = GradSampleModule(copy.deepcopy(model), loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(wrapped.parameters(), lr=0.1), noise_multiplier=0.0,
                            max_grad_norm=max_grad_norm, expected_batch_size=EXAMPLES)
    group_copies_before_clipping(optimizer, GROUP)
    nn.functional.cross_entropy(forward(wrapped, rows), rows["labels"]).backward()
    assert optimizer.params[0].grad_sample.shape[0] == EXAMPLES * GROUP  # Opacus computed one row per copy
    assert optimizer.pre_step()

    factors = (max_grad_norm / (norms(means) + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any()
    for parameter, mean in zip(optimizer.params, means):
        assert parameter.grad_sample.shape == (EXAMPLES, *parameter.shape)  # one row per example
        torch.testing.assert_close(parameter.grad_sample, mean, rtol=1e-4, atol=1e-6)
        # noise 0: the step's gradient is the clipped rows' sum over the expected number of examples
        torch.testing.assert_close(parameter.grad, torch.einsum("b,b...->...", factors, mean) / EXAMPLES,
                                   rtol=1e-4, atol=1e-6)
    clipped = norms([factors.view(-1, *[1] * (m.dim() - 1)) * p.grad_sample for p, m in zip(optimizer.params, means)])
    assert clipped.shape == (EXAMPLES,) and (clipped <= max_grad_norm * (1 + 1e-5)).all()


def test_ghost_clipping_is_refused():
    from opacus.optimizers import DPOptimizerFastGradientClipping

    optimizer = DPOptimizerFastGradientClipping(torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1),
                                                noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=1)
    with pytest.raises(PrivacyError, match="bookkeeping"):
        group_copies_before_clipping(optimizer, GROUP)


def test_rows_that_are_not_whole_groups_are_refused():
    with pytest.raises(PrivacyError, match="not whole groups of 3"):
        group_mean(torch.zeros(7, 2), 3)
    assert group_mean(torch.zeros(0, 2), 3).shape == (0, 2)  # an empty Poisson batch stays empty
    torch.testing.assert_close(group_mean(torch.arange(6.0).view(6, 1), 3), torch.tensor([[1.0], [4.0]]))


def test_stacked_copies_load_as_adjacent_rows_under_poisson_sampling(tiny_model_dir):
    from opacus.data_loader import DPDataLoader
    from transformers import AutoTokenizer

    from secure_ft.text.augmentation import Perturber
    from secure_ft.training.training_loop import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"my loan payment {i} was late and the fee was wrong" for i in range(12)]
    labels = [i % 3 for i in range(12)]
    perturber = Perturber(char_edit_fraction=1.0, synonym_fraction=0.0, word_rate=0.3, seed=0)
    copies = [encode(tokenizer, [perturber.copy(text, i, k) for i, text in enumerate(texts)], labels, 16)
              for k in range(GROUP - 1)]
    dataset = stack_copies(encode(tokenizer, texts, labels, 16), copies)
    assert len(dataset) == 12 and dataset.tensors[0].shape == (12, GROUP, 16)  # N examples, not N·G

    loader = DPDataLoader.from_data_loader(DataLoader(dataset, batch_size=4, collate_fn=collate_copies),
                                           generator=torch.Generator().manual_seed(0))
    seen = 0
    for ids, mask, token_types, positions, batch_labels in loader:
        assert ids.shape[0] % GROUP == 0 and ids.shape[1:] == (16,)
        groups = batch_labels.view(-1, GROUP)
        assert (groups == groups[:, :1]).all()  # an example's copies sit together and share its label
        seen += len(groups)
    assert seen > 0
    with pytest.raises(PrivacyError, match="copy 0 has 11 rows"):
        stack_copies(dataset, [encode(tokenizer, texts[:11], labels[:11], 16)])
