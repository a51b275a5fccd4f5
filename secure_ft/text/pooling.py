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

``mean_normalized`` is the same mean scaled to unit L2 norm: the sentence embedding a
sentence-transformers export with a ``Normalize`` module produces, and what the frozen-encoder
probe (`secure_ft.training.probe`) trains its head on. Unit-norm features bound every example's input to
the head, so DP-SGD's per-sample clipping removes little signal.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

MEAN = "mean"
MEAN_NORMALIZED = "mean_normalized"
MEAN_POOLINGS = (MEAN, MEAN_NORMALIZED)  # the variants `use_mean_pooling` installs and config.json records
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}


class MaskedMeanPooler(nn.Module):
    """Average of the token states the attention mask keeps; padding never changes the result."""

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize  # scale each sentence vector to unit L2 norm (`MEAN_NORMALIZED`)
        self.attention_mask: torch.Tensor | None = None  # set by the encoder's pre-hook, per call

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask, self.attention_mask = self.attention_mask, None
        if mask is None:  # the encoder was called without a mask: every position is a token
            pooled = hidden_states.mean(dim=1)
        else:
            if mask.dim() != 2 or mask.shape != hidden_states.shape[:2]:
                raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not match hidden states "
                                 f"{tuple(hidden_states.shape)}; pass the tokenizer's 2-D attention_mask")
            weights = mask.to(hidden_states.dtype).unsqueeze(-1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        # the same epsilon as sentence-transformers' Normalize (torch.nn.functional.normalize)
        return nn.functional.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


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


def use_mean_pooling(model: nn.Module, variant: str = MEAN) -> bool:
    """Replace a BERT-style pooler by `MaskedMeanPooler`; False when the model has no pooler to replace.

    Parameters
    ----------
    model
        A transformers model whose base model has a ``pooler`` (BERT-style).
    variant
        ``"mean"``, or ``"mean_normalized"`` (the mean scaled to unit L2 norm); recorded as
        ``config.pooling`` so that `secure_ft.text.models.load_trained_model` restores it.
    """
    if variant not in MEAN_POOLINGS:
        raise ValueError(f"unknown mean pooling variant {variant!r}; use one of {', '.join(MEAN_POOLINGS)}")
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or not isinstance(getattr(encoder, "pooler", None), nn.Module):
        return False
    already_hooked = isinstance(encoder.pooler, MaskedMeanPooler)
    encoder.pooler = MaskedMeanPooler(normalize=variant == MEAN_NORMALIZED)
    if not already_hooked:
        encoder.register_forward_pre_hook(_hand_mask_to_pooler, with_kwargs=True)
    model.config.pooling = variant
    return True
