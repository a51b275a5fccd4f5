"""A verified bundle's classifier: texts in, class probabilities out, as the audits computed them."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secure_ft.errors import BundleError
from secure_ft.serving.bundle_loader import VerifiedBundle
from secure_ft.text.models import predict, resolve_device
from secure_ft.text.text_front_end import TextFrontEnd, identity_front_end

REPORT_FILE = "audit_report.json"

log = logging.getLogger(__name__)

# reports have recorded run.model.max_length since bundles existed; a report without it is hand-made or
# damaged, and gets the training default of that time (128; training reads 64 by default now)
DEFAULT_MAX_LENGTH = 128
# On a CPU a forward pass costs about its padded tokens: matrix products are 86 % of its time at one
# text and at 16 alike (default encoder, 1 thread; short complaints: 10.7 ms of GEMM per text alone,
# 6.6 ms in a pass of 16, where the products run near the core's peak). Texts are sorted by token count
# and cut into chunks of at most this many padded tokens: little padding, products already efficient.
CPU_TOKEN_BUDGET = 512
# A batch (one hold of the worker) runs at most this many such chunks: a request arriving behind a
# large one waits for at most this much work before its own pass (fair batching, `batching.py`)
CPU_CHUNKS_PER_BATCH = 2
CHARACTERS_PER_TOKEN = 4  # English WordPiece averages a little over 4 characters per token


@dataclass
class BundleClassifier:
    """Model, tokenizer and preprocessing of one bundle; :meth:`probabilities` is thread-confined.

    Attributes
    ----------
    labels
        Class names in output order (the model config's ``id2label``).
    max_length
        Tokens read per text: the length the model was trained and audited with.
    """

    model: object
    tokenizer: object
    labels: list[str]
    max_length: int
    device: str
    front_end: TextFrontEnd

    @classmethod
    def from_bundle(cls, bundle: VerifiedBundle, device: str = "auto") -> "BundleClassifier":
        """Build the verified bundle's model on `device` from its verified bytes (never from the folder).

        Weights come from memory (safetensors, pooling restored), the tokenizer, config and
        front end from a private copy of the verified bytes, the sequence length from the
        verified report (see `secure_ft.text.snapshot_model`).

        Raises
        ------
        BundleError
            When the snapshot's model is not the one the signed verdict names.
        """
        from secure_ft.text.models import WEIGHTS_FILE
        from secure_ft.text.snapshot_model import MODEL_FOLDER, load_model_from_snapshot, snapshot_model_digest

        if f"{MODEL_FOLDER}/{WEIGHTS_FILE}" not in bundle.snapshot.files:
            raise BundleError(f"{bundle.bundle_dir}: this verified bundle's weights were released by a first load; "
                              "verify the bundle again (load_verified_bundle) to build another classifier")
        # verification already tied these bytes to the verdict; re-derived here so a caller cannot mix bundles
        if snapshot_model_digest(bundle.snapshot) != bundle.model_sha256:
            raise BundleError(f"{bundle.bundle_dir}: the model read is not the one the signed verdict names")
        # the tensors own a copy of the weights: the snapshot's bytes are dropped, not kept as a second one
        model, tokenizer, front_end = load_model_from_snapshot(bundle.snapshot, resolve_device(device),
                                                               release_weights=True)
        config = model.config
        labels = [str(config.id2label.get(index, f"LABEL_{index}")) for index in range(config.num_labels)]
        report = bundle.read(REPORT_FILE)
        return cls(model=model, tokenizer=tokenizer, labels=labels,
                   max_length=trained_max_length(report, bundle.bundle_dir / REPORT_FILE),
                   device=str(model.device), front_end=identity_front_end if front_end is None else front_end.correct_all)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, float32 of shape (len(texts), classes), in input order.

        A GPU gets all texts in one forward pass; a CPU gets them sorted by token count in chunks
        of at most `CPU_TOKEN_BUDGET` padded tokens. Padding never changes a row.
        """
        prepared = self.front_end(texts)
        rows = np.empty((len(prepared), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():  # no autograd bookkeeping: faster, and nothing kept alive
            for chunk in self._chunks(prepared):
                out = predict(self.model, self.tokenizer, [prepared[index] for index in chunk],
                              max_length=self.max_length, batch_size=len(chunk), device=self.device)
                rows[chunk] = out.probabilities.numpy()
        return rows

    def _chunks(self, texts: list[str]) -> list[list[int]]:
        """Indices of `texts` grouped into forward passes (see `probabilities`)."""
        if self.device != "cpu" or len(texts) <= 1:
            return [list(range(len(texts)))] if texts else []
        counts = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        chunks: list[list[int]] = [[]]
        for index in sorted(range(len(texts)), key=counts.__getitem__):
            # sorted: the newest text is the longest, so it sets the chunk's padded length
            if chunks[-1] and (len(chunks[-1]) + 1) * counts[index] > CPU_TOKEN_BUDGET:
                chunks.append([])
            chunks[-1].append(index)
        return chunks

    def estimated_tokens(self, text: str) -> int:
        """Tokens `text` will take, estimated from its length without tokenising (about 4 characters a token).

        Cheap enough for the event loop; the batcher uses it to bound a batch's cost.
        """
        return min(self.max_length, len(text) // CHARACTERS_PER_TOKEN + 2)

    def batch_token_budget(self) -> int | None:
        """Most estimated tokens per batch: a few CPU chunks, so a new request never waits long; None on a GPU."""
        return CPU_TOKEN_BUDGET * CPU_CHUNKS_PER_BATCH if self.device == "cpu" else None

    def label_names(self, probabilities: np.ndarray) -> list[str]:
        """The most probable class name of each row."""
        return [self.labels[index] for index in probabilities.argmax(axis=-1).tolist()]


def trained_max_length(report: bytes, where: Path) -> int:
    """The sequence length the bundle's model was trained and audited with (from its verified report)."""
    try:
        value = (json.loads(report.decode("utf-8")).get("run") or {}).get("model", {}).get("max_length")
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        log.warning("%s: no run.model.max_length; reading %d tokens per text", where, DEFAULT_MAX_LENGTH)
        return DEFAULT_MAX_LENGTH
    return value
