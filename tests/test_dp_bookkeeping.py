"""Book-keeping clipping gives the same clipped gradient sum as Opacus' per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from dp_helpers import without_dropout
from secure_ft.privacy.bookkeeping_clipping import BookKeepingLoss, BookKeepingModule, unsupported_layers
from secure_ft.records.config import ModelConfig
from secure_ft.text.models import apply_transfer, load_trained_model
from tiny_models import tiny_bert_folder
from secure_ft.privacy.engine import choose_grad_sample_mode
from secure_ft.training.training_loop import _trim, encode, forward_logits
from toy_data import VOCAB, toy_frame


@pytest.fixture(scope="module")
def tiny_without_dropout(tmp_path_factory):
    return without_dropout(tiny_bert_folder(tmp_path_factory.mktemp("tiny-nodrop"), VOCAB, num_labels=3))


def _model(folder, transfer):
    model, tokenizer = load_trained_model(folder)
    return apply_transfer(model, ModelConfig(transfer=transfer, max_length=16)).train(), tokenizer


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("transfer", ["full", "lora"])
def test_clipped_sum_equals_opacus_hooks(tiny_without_dropout, transfer):
    clip = 0.5
    model, tokenizer = _model(tiny_without_dropout, transfer)
    frame = toy_frame(rows_per_class=6)
    texts = frame["text"].tolist()
    texts[0] = "card"  # a short text: its row is padded, the padding row must get no gradient
    dataset = encode(tokenizer, texts, [i % 3 for i in range(len(texts))], 16)
    batch = _trim([tensor[:12] for tensor in dataset.tensors])
    assert (batch[0] == 0).any()  # padding present
    state = {key: value.clone() for key, value in model.state_dict().items()}

    wrapped = BookKeepingModule(model, clip)
    BookKeepingLoss(wrapped)(forward_logits(wrapped, batch), batch[-1]).backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    our_norms = wrapped.per_sample_norms.clone()
    assert all(p.requires_grad for name, p in model.named_parameters() if name in ours)  # restored after forward

    reference, _ = _model(tiny_without_dropout, transfer)
    reference.load_state_dict(state)
    hooks = GradSampleModule(reference, loss_reduction="sum")
    parameters = [p for p in reference.parameters() if p.requires_grad]
    optimizer = DPOptimizer(torch.optim.SGD(parameters, lr=0.0), noise_multiplier=0.0, max_grad_norm=clip,
                            expected_batch_size=12, loss_reduction="sum")
    nn.functional.cross_entropy(forward_logits(hooks, batch), batch[-1], reduction="sum").backward()
    per_sample = torch.stack([g.reshape(12, -1).norm(dim=1) for g in optimizer.grad_samples], dim=1).norm(dim=1)
    optimizer.clip_and_accumulate()
    theirs = {name: p.summed_grad for name, p in reference.named_parameters() if p.requires_grad}

    assert ours.keys() == theirs.keys() and len(ours) > 5
    torch.testing.assert_close(our_norms, per_sample, rtol=1e-5, atol=1e-7)
    assert (our_norms > clip).any()  # clipping was active
    scale = max(float(g.abs().max()) for g in theirs.values())
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    if transfer == "full":
        word_embeddings = model.bert.embeddings.word_embeddings
        assert float(ours["bert.embeddings.word_embeddings.weight"][word_embeddings.padding_idx].abs().max()) == 0.0


def test_bookkeeping_is_transparent_outside_training(tiny_without_dropout):
    model, tokenizer = _model(tiny_without_dropout, "full")
    wrapped = BookKeepingModule(model, 1.0)
    batch = _trim(list(encode(tokenizer, ["card fee"], [0], 16).tensors))
    with torch.no_grad():
        logits = forward_logits(wrapped, batch)
    assert not logits.requires_grad and wrapped._records == {}


def test_unsupported_layers_fall_back_to_an_opacus_mode():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 4, 1))
    assert unsupported_layers(model) == ["1 (Conv1d)"]
    mode, reason = choose_grad_sample_mode(model, "auto")
    assert mode == "ghost" and "Conv1d" in reason
    assert choose_grad_sample_mode(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "auto")[0] == "bookkeeping"
