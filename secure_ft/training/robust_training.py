"""Robustness-focused training (issue #16): the front end and the augmented training set.

Central runs (`secure_ft.training.central_run`) and federated sites and coordinators (`federated`)
ask this module two things, both decided by ``training.robustness``
(`secure_ft.records.robust_training_config`):

* `build_front_end`: the typo-correcting front end (`secure_ft.text.spelling`) built from public
  resources and the base tokenizer, plus — only when opted in — the training data's words,
  which are then outside the DP guarantee (``uses_private_vocabulary``). The run corrects
  every training and validation text with it and saves it inside the model folder, so the
  audits and serving put the same front end in front of the model
  (`secure_ft.text.text_classifier.TextClassifier`).
* `training_set`: the encoded training split; with ``augmentation_copies`` K > 0 each item
  carries the example and K perturbed copies (`secure_ft.text.augmentation.Perturber`, seeded by
  the run seed and the example's row, so a copy depends on its example alone), stacked with
  `secure_ft.training.multiplicity.stack_copies`. The training loop then collates the copies into
  adjacent rows; DP-SGD averages each example's rows before clipping (one clipped row per
  example: ε as without copies) and plain training averages their losses.

The copies go through the front end too: the model always reads what serving would feed it.
`robust_datasets` puts both together for any transfer mode: what `fit` trains on (the probe's
copies embedded once, through the run's or site's embedding cache, like the originals) and
the evaluation sets, all read through the front end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.data import TensorDataset

from secure_ft.records.config import RunConfig
from secure_ft.records.robust_training_config import RobustTrainingConfig
from secure_ft.text.augmentation import Perturber, WordNetSynonyms
from secure_ft.text.spelling import SpellingFrontEnd, text_words
from secure_ft.text.text_classifier import describe_front_end
from secure_ft.training.multiplicity import stack_copies
from secure_ft.training.probe import trainee_and_datasets
from secure_ft.training.training_loop import encode

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def build_front_end(settings: RobustTrainingConfig, tokenizer, train_texts: Sequence[str]) -> SpellingFrontEnd | None:
    """The front end ``settings.front_end`` asks for (None for ``none``).

    Training words are added only with ``front_end_extra_words_from_training_data`` (then the
    front end says ``uses_private_vocabulary``).
    """
    if settings.front_end == "none":
        return None
    extra = text_words(train_texts) if settings.front_end_extra_words_from_training_data else None
    if extra is not None:
        log.warning("training.robustness: the spelling front end includes %d words from the training data; "
                    "they are NOT covered by the DP guarantee (uses_private_vocabulary: true)", len(extra))
    return SpellingFrontEnd.from_public_resources(tokenizer, max_edit_distance=settings.front_end_max_edit_distance,
                                                  extra_words=extra)


def apply_front_end(front_end: SpellingFrontEnd | None, texts: Sequence[str]) -> list[str]:
    """What the model reads: `texts` through the front end (unchanged without one)."""
    return [str(text) for text in texts] if front_end is None else front_end.correct_all(str(t) for t in texts)


def through_front_end(front_end: SpellingFrontEnd | None, frame: "pd.DataFrame") -> "pd.DataFrame":
    """`frame` with its ``text`` column as the model reads it (the same frame without a front end)."""
    return frame if front_end is None else frame.assign(text=apply_front_end(front_end, frame["text"].tolist()))


def perturber_for(settings: RobustTrainingConfig, seed: int, resources_root=None) -> Perturber:
    """The run's `Perturber`: its mix and rate from the settings, its seed the run's."""
    synonyms = WordNetSynonyms(resources_root) if settings.synonym_fraction > 0 else None
    return Perturber(char_edit_fraction=settings.char_edit_fraction, synonym_fraction=settings.synonym_fraction,
                     word_rate=settings.word_rate, seed=seed, synonyms=synonyms)


def training_set(tokenizer, texts: Sequence[str], labels: Sequence[int], rows: Sequence[int], max_length: int,
                 settings: RobustTrainingConfig, seed: int, front_end: SpellingFrontEnd | None = None,
                 perturber: Perturber | None = None) -> TensorDataset:
    """The encoded training split; with K = ``augmentation_copies`` > 0, items of shape (1 + K, …).

    Parameters
    ----------
    texts, labels, rows
        The training split's raw texts, label indices and stable row numbers (the row, not the
        position, seeds each example's copies, so a copy does not depend on the split's order).
    front_end
        Applied to the texts and to every copy after perturbation.
    perturber
        Overrides the one built from `settings` (tests, benchmarks).
    """
    labels = [int(label) for label in labels]
    original = encode(tokenizer, apply_front_end(front_end, texts), labels, max_length)
    copy_sets = [encode(tokenizer, apply_front_end(front_end, perturbed), labels, max_length)
                 for perturbed in copy_texts(texts, rows, settings, seed, perturber)]
    return stack_copies(original, copy_sets) if copy_sets else original


def copy_texts(texts: Sequence[str], rows: Sequence[int], settings: RobustTrainingConfig, seed: int,
               perturber: Perturber | None = None) -> list[list[str]]:
    """The K = ``augmentation_copies`` perturbed versions of `texts`, copy k of every text in list k.

    Each copy is seeded by the run seed, the example's row and k alone, so it depends on that
    example only (and not on the split's order). No lists when K = 0.
    """
    copies = settings.augmentation_copies
    if not copies:
        return []
    perturber = perturber or perturber_for(settings, seed)
    log.info("training.robustness: %d perturbed copies of each of the %d training examples", copies, len(texts))
    return [[perturber.copy(str(text), int(row), k) for text, row in zip(texts, rows)] for k in range(copies)]


def probe_copy_frames(train: "pd.DataFrame", settings: RobustTrainingConfig, seed: int,
                      perturber: Perturber | None = None) -> list["pd.DataFrame"]:
    """K copies of the training split (``text`` perturbed, seeded by each row), for the probe to embed.

    The probe reads sentence embeddings, so its copies are texts drawn once and embedded like
    the originals; `secure_ft.training.multiplicity.stack_copies` then groups them per example exactly
    as `training_set` does for token inputs. No copies (an empty list) when K = 0.
    """
    return [train.assign(text=texts) for texts in copy_texts(train["text"].tolist(), train["row"].tolist(),
                                                              settings, seed, perturber)]


def robust_datasets(model: nn.Module, tokenizer, config: RunConfig, train: "pd.DataFrame",
                    evaluation: Sequence["pd.DataFrame"], *, front_end: SpellingFrontEnd | None,
                    cache_dir: str | Path, device: str = "cpu", progress: bool = False,
                    embedding_stats: dict | None = None) -> tuple[nn.Module, TensorDataset, list[TensorDataset]]:
    """What `secure_ft.training.training_loop.fit` trains and evaluates: ``(trainee, training set, evaluation sets)``.

    Every text goes through `front_end`; with ``augmentation_copies`` K > 0 the training set's
    items carry the example and its K copies (seeded by ``config.seed`` and each ``row``), so
    that DP-SGD clips one averaged gradient per example and the accountant's inputs are those
    of the same run without copies.

    Parameters
    ----------
    train, evaluation
        Frames with ``text``, ``label`` and ``row`` columns (``row`` for `train` only).
    cache_dir
        With ``transfer: probe``: where the embeddings are cached (a run's or a site's
        ``cache/``); the copies are embedded once there, like the originals.
    embedding_stats
        With ``transfer: probe``: receives the embedding pass's counts and seconds
        (`secure_ft.training.probe.embed_texts`).
    """
    robustness = config.training.robustness
    if config.model.transfer == "probe":
        frames = [through_front_end(front_end, frame)
                  for frame in (train, *evaluation, *probe_copy_frames(train, robustness, config.seed))]
        trainee, (train_set, *rest) = trainee_and_datasets(
            model, tokenizer, config.model, frames, cache_dir=cache_dir, device=device,
            batch_size=config.training.eval_batch_size, progress=progress, embedding_stats=embedding_stats)
        evaluation_sets, copy_sets = rest[:len(evaluation)], rest[len(evaluation):]
        if copy_sets:
            train_set = stack_copies(train_set, copy_sets)  # one clipped gradient per example: ε unchanged
        return trainee, train_set, evaluation_sets
    max_length = config.model.max_length
    train_set = training_set(tokenizer, train["text"].tolist(), train["label"].astype(int).tolist(),
                             train["row"].astype(int).tolist(), max_length, robustness, config.seed, front_end)
    evaluation_sets = [encode(tokenizer, apply_front_end(front_end, frame["text"].tolist()),
                              frame["label"].astype(int).tolist(), max_length) for frame in evaluation]
    return model, train_set, evaluation_sets


def robustness_summary(settings: RobustTrainingConfig, front_end: SpellingFrontEnd | None) -> dict[str, Any]:
    """What the run's metrics say about robustness-focused training (no words of the dictionary)."""
    summary: dict[str, Any] = {
        "augmentation_copies": settings.augmentation_copies,
        "front_end": describe_front_end(front_end),
        "uses_private_vocabulary": bool(front_end is not None and front_end.uses_private_vocabulary),
    }
    if settings.augmentation_copies:
        summary["augmentation"] = {"char_edit_fraction": settings.char_edit_fraction,
                                   "synonym_fraction": settings.synonym_fraction, "word_rate": settings.word_rate,
                                   "rows_per_example": 1 + settings.augmentation_copies}
    return summary
