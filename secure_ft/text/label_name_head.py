"""A probe head that starts as a zero-shot classifier: each class's row is its name's sentence embedding.

Under DP-SGD every step's noise is the same size whatever the class, so a class with a few
dozen training rows barely moves a head that starts at zero: the finance demo's zero-started
probe never predicted 1–2 of its 9 products. A sentence encoder already places "Student
loan" near complaints about student loans, and the label names are public — they are the
declared label set, and they are saved in the model's config for every run anyway — so
starting each class's weight row at its name's unit-length embedding reads no training row
and spends no privacy. DP-SGD then only has to correct a classifier that is already roughly
right (logits = 20 · cosine(text, name)).

``model.head_init: auto`` uses it for ``transfer: probe`` when the names say something (not
"0"/"1" or "LABEL_3", whose embeddings carry no meaning); otherwise the head keeps the
transformers initialisation.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# sentence-transformers trained all-MiniLM-L6-v2 with this logit scale over cosine similarities
# (MultipleNegativesRankingLoss, scale 20): the softmax is as sharp as the encoder was trained for
LOGIT_SCALE = 20.0
LABEL_NAMES, RANDOM = "label_names", "random"
_MEANINGLESS = re.compile(r"(label_?)?\d+", re.IGNORECASE)


def names_are_descriptive(label_names: list[str]) -> bool:
    """True when every class name holds a word of two letters or more and none is a bare id."""
    return all(re.search(r"[A-Za-z]{2}", name) and not _MEANINGLESS.fullmatch(name.strip())
               for name in label_names)


def resolve_head_init(head_init: str, transfer: str, label_names: list[str]) -> str:
    """``label_names`` or ``random`` for a configured ``model.head_init`` (auto decided here)."""
    if head_init == "auto":
        return LABEL_NAMES if transfer == "probe" and names_are_descriptive(label_names) else RANDOM
    return head_init


@torch.no_grad()
def init_head_from_label_names(model: nn.Module, tokenizer, label_names: list[str], max_length: int) -> None:
    """Set ``model.classifier`` to LOGIT_SCALE × each name's unit-length pooled embedding, bias 0.

    Reads the names through the model's own encoder and pooler, so the rows live in the space
    of the sentence embeddings the head is trained on. Records the choice in the model config.
    """
    classifier = model.classifier
    encoder = getattr(model, model.base_model_prefix)
    batch = tokenizer(list(label_names), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    was_training = model.training
    model.eval()
    device = classifier.weight.device
    vectors = encoder(**{key: value.to(device) for key, value in batch.items()}).pooler_output.float()
    model.train(was_training)
    rows = torch.nn.functional.normalize(vectors, dim=-1) * LOGIT_SCALE
    classifier.weight.copy_(rows.to(classifier.weight.dtype))
    classifier.bias.zero_()
    model.config.head_init = LABEL_NAMES
