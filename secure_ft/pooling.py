"""Mean pooling for sentence-transformers bases: read the sentence as its encoder was trained to.

Sentence-transformers models such as all-MiniLM-L6-v2 were trained so that the *average* of
their token states is the sentence embedding; their BERT pooler ([CLS] → dense → tanh) was
never trained. A frozen linear probe on SST-2 (8,000 training rows, dev accuracy) reads 0.808
from the masked mean but 0.742 from tanh([CLS]): a head on the mean starts from features that
already separate the classes, which is what DP-SGD's few noisy steps need.

BERT's classifier reads `pooler(sequence_output)`, and the pooler only sees the hidden states,
so a forward pre-hook on the encoder hands it the attention mask of the same call. The pooler
has no weights; the saved config records `pooling: "mean"` and `load_trained_model` puts the
pooler back (plain `transformers` would read [CLS] through an untrained layer instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

MEAN = "mean"
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}


class MaskedMeanPooler(nn.Module):
    """Average of the token states the attention mask keeps; padding never changes the result."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: torch.Tensor | None = None  # set by the encoder's pre-hook, per call

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask, self.attention_mask = self.attention_mask, None
        if mask is None:  # the encoder was called without a mask: every position is a token
            return hidden_states.mean(dim=1)
        if mask.dim() != 2 or mask.shape != hidden_states.shape[:2]:
            raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not match hidden states "
                             f"{tuple(hidden_states.shape)}; pass the tokenizer's 2-D attention_mask")
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _hand_mask_to_pooler(encoder: nn.Module, args: tuple, kwargs: dict) -> None:
    # a module-level function, so deep copies (Opacus, federated clients) hook their own pooler
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]  # BertModel.forward(input_ids, attention_mask, ...)
    encoder.pooler.attention_mask = mask


def sentence_transformers_pooling(model_dir: str | Path) -> str | None:
    """The pooling a sentence-transformers export declares ("mean", "cls", ...), or None if it is not one."""
    folder = Path(model_dir)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules if isinstance(modules, list) else []:
        if not str(module.get("type", "")).endswith("models.Pooling"):
            continue
        try:
            settings = json.loads((folder / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        declared = [name for key, name in _POOLING_MODES.items() if settings.get(key)]
        return "+".join(declared) or None  # several modes are concatenated: "mean+max"
    return None


def use_mean_pooling(model: nn.Module) -> bool:
    """Replace a BERT-style pooler by `MaskedMeanPooler`; False when the model has no pooler to replace."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or not isinstance(getattr(encoder, "pooler", None), nn.Module):
        return False
    encoder.pooler = MaskedMeanPooler()
    encoder.register_forward_pre_hook(_hand_mask_to_pooler, with_kwargs=True)
    model.config.pooling = MEAN
    return True
