"""A trained model as it is served: raw text → front end → tokenizer → classifier.

A model folder written by `secure_ft.text.models.save_trained_model` may hold a text front end
(``front_end/``, see `secure_ft.text.spelling`) that the model was trained behind, and the exported
encoder graph its probe was trained on (``encoder_onnx/``, see `secure_ft.text.onnx_encoder`). Whoever
scores texts with the model — the audits, the TextAttack wrapper, serving, a user's script —
must put the same front end in front of it, or they measure a different model from the one
that ships. `TextClassifier` is that one path: it loads the three parts from the folder and
applies them in order, so nobody has to remember the front end.

Examples
--------
>>> classifier = TextClassifier.load("runs/2026-…/model")          # doctest: +SKIP
>>> classifier.predict_proba(["My paymnet was late"]).shape          # doctest: +SKIP
(1, 5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secure_ft.text.models import Predictions, load_front_end, load_trained_model, predict
from secure_ft.text.onnx_encoder import with_folder_graph


class TextClassifier:
    """A sequence classifier, its tokenizer and its optional text front end, used together.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` sequence classifier (eval mode) and its tokenizer.
    front_end
        Applied to every text before tokenising (``correct(text) -> str``); None = none.
    max_length
        Longest sequence the model sees, in tokens (default: the tokenizer's ``model_max_length``).
    device
        Where the model runs.
    """

    def __init__(self, model, tokenizer, front_end=None, *, max_length: int | None = None, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.front_end = front_end
        self.max_length = int(max_length or min(getattr(tokenizer, "model_max_length", 512), 4096))
        self.device = device

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str], device: str = "cpu",
             max_length: int | None = None) -> "TextClassifier":
        """Model, tokenizer and front end from one model folder (ModelError when any part is damaged)."""
        model, tokenizer = load_trained_model(Path(model_dir), device)
        # a probe saved with its encoder graph runs on it, as it did in training (secure_ft.text.onnx_encoder)
        model = with_folder_graph(model, model_dir, device)
        return cls(model, tokenizer, load_front_end(model_dir), max_length=max_length, device=device)

    @property
    def config(self):
        """The model's ``transformers`` config (labels, number of classes)."""
        return self.model.config

    def model_inputs(self, texts: Sequence[str]) -> list[str]:
        """The texts the model actually reads: each one through the front end (unchanged without one)."""
        if self.front_end is None:
            return [str(text) for text in texts]
        return [self.front_end.correct(str(text)) for text in texts]

    def predict(self, texts: Sequence[str], labels: Sequence[int] | None = None,
                batch_size: int = 64) -> Predictions:
        """Probabilities (and per-text losses when `labels` are given) of raw `texts`, front end applied."""
        return predict(self.model, self.tokenizer, self.model_inputs(texts),
                       labels=None if labels is None else [int(label) for label in labels],
                       max_length=self.max_length, batch_size=batch_size, device=self.device)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, classes) class probabilities of raw `texts`, as served."""
        return self.predict(texts, batch_size=batch_size).probabilities.numpy().astype(float)

    def describe_front_end(self) -> dict[str, Any] | None:
        """What reports say about the front end (None without one); never any of its words."""
        return describe_front_end(self.front_end)


def describe_front_end(front_end) -> dict[str, Any] | None:
    """Kind, size, sources and ``uses_private_vocabulary`` of a front end, for metrics and reports."""
    if front_end is None:
        return None
    config = front_end.config()
    summary = {key: config.get(key) for key in ("kind", "max_edit_distance", "words", "sources",
                                                 "uses_private_vocabulary", "dictionary_sha256")}
    # None: a front end saved before long all-capitals words were corrected leaves them all alone
    summary["all_capitals_kept_up_to"] = config.get("acronym_max_length")
    if summary["uses_private_vocabulary"]:
        summary["note"] = ("the front end's dictionary holds words from the training data: it is NOT covered by the "
                           "differential-privacy guarantee (the saved dictionary shows which words occur in the data)")
    return summary
