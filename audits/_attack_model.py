"""A TextAttack model wrapper built for throughput on CPU: what TextAttack asks, computed once.

TextAttack's stock ``HuggingFaceModelWrapper`` pads every query to
``tokenizer.model_max_length`` (512 for most checkpoints) and runs under ``no_grad``. Attack
queries are many near-identical short-ish texts, so this wrapper

* truncates at the length the model was trained with and pads each batch only to its longest
  member (sorted by length, so batches are uniform);
* runs the model under ``torch.inference_mode``;
* caches logits by the token ids the model actually sees, across calls, examples and recipes
  in the same process: a perturbation past the truncation point, or one that tokenizes the
  same, costs nothing, and the leave-one-out texts that rank word importance are shared by
  every recipe using the same ranking.

The model is attacked as served: a model folder's text front end (`secure_ft.text.spelling`, given
as ``front_end``) corrects every query before tokenising, so an attack must get past the typo
correction as it would in serving. (TextAttack's gradient-based recipes read gradients of the
uncorrected text; none of the default recipes uses them.)

Import it only after :func:`audits._textattack_offline.import_textattack`. It returns the same raw logits the stock wrapper returns, so goal functions, search methods
and results are unchanged; gradient-based recipes use the stock ``get_grad`` (with the
tokenizer's maximum length set to the trained length).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from textattack.models.wrappers import HuggingFaceModelWrapper
from transformers import PreTrainedModel


class FastClassifierWrapper(HuggingFaceModelWrapper):
    """Batched, length-capped, cached queries of a sequence classifier.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` sequence classifier (eval mode) and its tokenizer.
    max_length
        Longest sequence the model sees, in tokens: the trained ``model.max_length``.
    batch_size
        Most sequences per forward pass.
    cache_size
        Most texts whose logits are kept (least recently used are dropped first).
    front_end
        The model folder's text front end (``correct(text) -> str``), applied to every query; None = none.
    """

    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 64, cache_size: int = 200_000,
                 front_end=None):
        tokenizer.model_max_length = max_length  # also bounds get_grad and tokenize()
        if isinstance(model, PreTrainedModel):
            super().__init__(model, tokenizer)
        else:
            # a probe on its exported encoder graph (secure_ft.text.onnx_encoder.GraphSequenceClassifier) is called
            # like a transformers classifier; the stock __init__ only asserts the type and stores both
            self.model = model
            self.tokenizer = tokenizer
        self.front_end = front_end
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.model_rows = 0  # sequences actually run through the model
        self.cache_hits = 0

    def __call__(self, text_input_list):
        encoded = self._encode(self.model_inputs(list(text_input_list)))
        keys = [self._key(encoded, i) for i in range(len(text_input_list))]
        missing: dict[bytes, int] = {}  # first position of each key the cache lacks
        for position, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = position
        self.cache_hits += len(keys) - len(missing)
        if missing:
            for key, row in zip(missing, self._logits(encoded, list(missing.values()))):
                self._cache[key] = row
        rows = []
        for key in keys:
            self._cache.move_to_end(key)
            rows.append(self._cache[key])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.from_numpy(np.stack(rows))

    def model_inputs(self, inputs: list) -> list:
        """The queries as the model reads them: each text (or each part of a pair) through the front end."""
        if self.front_end is None:
            return inputs
        correct = self.front_end.correct
        return [tuple(correct(part) for part in item) if isinstance(item, (tuple, list)) else correct(item)
                for item in inputs]

    def clear_cache(self) -> None:
        self._cache.clear()

    def _encode(self, inputs: list) -> dict[str, list[list[int]]]:
        """Token ids of each input (a text, or a tuple for paired inputs), truncated, unpadded."""
        if inputs and isinstance(inputs[0], (tuple, list)):
            return self.tokenizer([pair[0] for pair in inputs], [pair[1] for pair in inputs],
                                  truncation=True, max_length=self.max_length)
        return self.tokenizer(inputs, truncation=True, max_length=self.max_length)

    @staticmethod
    def _key(encoded, position: int) -> bytes:
        """What the model sees: texts that truncate or tokenize to the same ids share an entry."""
        key = np.asarray(encoded["input_ids"][position], dtype=np.int32).tobytes()
        if "token_type_ids" in encoded:
            key += b"|" + np.asarray(encoded["token_type_ids"][position], dtype=np.int8).tobytes()
        return key

    def _logits(self, encoded, positions: list[int]) -> np.ndarray:
        """Logits of the encoded inputs at `positions`, in that order, longest batched first."""
        lengths = np.array([len(encoded["input_ids"][p]) for p in positions])
        order = np.argsort(-lengths, kind="stable")
        device = next(self.model.parameters()).device
        out = np.empty((len(positions), self._num_labels()), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chosen = order[start:start + self.batch_size]
                batch = self._padded({name: [values[positions[i]] for i in chosen]
                                      for name, values in encoded.items()})
                logits = self.model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits
                out[chosen] = logits.float().cpu().numpy()
        self.model_rows += len(positions)
        return out

    def _padded(self, features: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """Pad token-id lists to the batch's longest, on the tokenizer's padding side."""
        width = max(len(ids) for ids in features["input_ids"])
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0,
                      "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0),
                      "attention_mask": 0}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch = {}
        for name, rows in features.items():
            if name not in pad_values:
                continue  # e.g. special_tokens_mask, offsets: not model inputs
            tensor = torch.full((len(rows), width), pad_values[name], dtype=torch.long)
            for i, row in enumerate(rows):
                if left:
                    tensor[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
                else:
                    tensor[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            batch[name] = tensor
        return batch

    def _num_labels(self) -> int:
        return int(getattr(self.model.config, "num_labels", 2))
