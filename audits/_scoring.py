"""Scoring a data split with the trained model, the way every audit needs it.

The model is scored as served: raw text through the model folder's front end (if it has one)
into the classifier (`secure_ft.text.text_classifier.TextClassifier`). The model only ever sees the `text` column: group columns are read from the split by the
audits themselves, never passed to the model. The trained model's label set is checked
against the data's, so predictions are never compared with labels of another task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audits.context import AuditContext
from secure_ft.errors import AuditError
from secure_ft.text.text_classifier import TextClassifier


@dataclass
class SplitScores:
    """Model outputs for the rows of one split, in row order."""

    probabilities: np.ndarray  # (n, classes)
    losses: np.ndarray  # (n,) cross-entropy of the true label
    labels: np.ndarray  # (n,) true label indices

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1) if len(self.probabilities) else np.zeros(0, dtype=int)


def load_model_for(context: AuditContext) -> TextClassifier:
    """The trained model as served (front end, tokenizer, classifier), checked against the data's label set."""
    classifier = TextClassifier.load(context.model_dir, context.device, max_length=context.config.model.max_length)
    model = classifier.model
    label_names = context.splits.label_names
    num_labels = int(getattr(model.config, "num_labels", len(label_names)))
    if num_labels != len(label_names):
        raise AuditError(
            f"{context.model_dir}: the model has {num_labels} output classes but the data has "
            f"{len(label_names)} labels ({', '.join(label_names)}); audit the model with the data it was trained on"
        )
    id2label = {int(key): str(value) for key, value in (getattr(model.config, "id2label", None) or {}).items()}
    generic = all(value == f"LABEL_{key}" for key, value in id2label.items())
    if id2label and not generic and [id2label.get(index) for index in range(num_labels)] != list(label_names):
        raise AuditError(
            f"{context.model_dir}: the model's labels {[id2label.get(i) for i in range(num_labels)]} differ from "
            f"the data's {list(label_names)} (config.json id2label); audit the model with the data it was trained on"
        )
    return classifier


def score_split(classifier: TextClassifier, frame: pd.DataFrame, context: AuditContext) -> SplitScores:
    """Probabilities and per-row losses of `frame`'s raw texts under the served model (text only)."""
    labels = frame["label"].to_numpy(dtype=int)
    outputs = classifier.predict(frame["text"].tolist(), labels=labels.tolist(),
                                 batch_size=context.config.training.eval_batch_size)
    return SplitScores(
        probabilities=outputs.probabilities.numpy().astype(float),
        losses=outputs.losses.numpy().astype(float),
        labels=labels,
    )
