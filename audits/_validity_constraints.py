"""Validity constraints of the label-preserving recipes, on TextAttack's own constraint classes.

TextAttack provides the constraints Morris et al. 2020 and Yoo & Qi 2021 (A2T) use; what it
cannot do offline is load their resources. This module plugs local resources into those
classes, and adds what the audit needs around them:

* :class:`RedactionPlaceholders`: a pre-transformation constraint (like TextAttack's
  ``StopwordModification``) that keeps words made of a redaction mask (``XX``, ``XXXX``,
  ``303XX``) out of every perturbation. Those marks are written by the data provider's
  redaction step after the author wrote the text: they are not language an attacker types,
  so editing them ("XX/XX/2019" → "X/XX/2019") is no threat a served model faces.
* :class:`StopwordsInAnyCase`: TextAttack's stopword constraint, matched in any case (its own
  compares the word as written, so "The" and "On" at a sentence start were edited).
* :class:`NumbersKept`: a pre-transformation constraint that keeps every word holding a
  digit out of every perturbation. A number's value is its meaning: "$850.00" → "$8q50.0" is
  not a misspelt word but a different or unreadable amount, and a number has no synonym.
* :class:`TyposAreNonWords`: a character edit whose result is an English word (the spelling
  front end's public lexicon, SymSpell's English frequency list, lower-cased) is rejected. It
  is a real-word substitution ("form" → "from") whose meaning the typo rules cannot judge;
  DeepWordBug's threat model (Gao et al. 2018) is misspelt words, and misspellings stay
  non-words.
* grammaticality (fine-grained tag, parse stability): :mod:`audits._grammaticality`; word
  sense (predominant WordNet sense): :mod:`audits._word_sense`.
* :class:`IndependentSentenceEncoder`: TextAttack's ``SBERT`` sentence-encoder constraint on
  a local sentence-transformers folder (the independent all-mpnet-base-v2), with encodings
  cached by text so a window seen once is never encoded again.
* :class:`CountingAttack`: TextAttack's ``Attack`` that counts, per constraint, how many
  candidate perturbations it rejected (and, per pre-transformation constraint, how many word
  positions it kept out of the search) — the audit's evidence that each constraint did work.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import torch
from textattack import Attack
from textattack.constraints import Constraint, PreTransformationConstraint
from textattack.constraints.pre_transformation import StopwordModification
from textattack.constraints.semantics.sentence_encoders import SBERT
from textattack.shared.validators import transformation_consists_of_word_swaps

from secure_ft.errors import AuditError

_PLACEHOLDER = re.compile(r"XX")  # two capital X in a row: a redaction mask, alone or inside a word (303XX)
_ENCODING_CACHE_LIMIT = 200_000


class RedactionPlaceholders(PreTransformationConstraint):
    """No perturbation touches a word holding a redaction mask (two or more capital X in a row)."""

    def _get_modifiable_indices(self, current_text):
        return {i for i, word in enumerate(current_text.words) if not _PLACEHOLDER.search(word)}

    def extra_repr_keys(self):
        return []


class StopwordsInAnyCase(StopwordModification):
    """TextAttack's ``StopwordModification``, matched without regard to case.

    TextAttack compares each word as written with the (lower-case) list, so a stopword that
    opens a sentence ("On", "The", "Of", "My") was edited by the label-preserving typo recipe
    although its policy says no stopword is touched: 58 of 344 changed words in the first read
    of the default model's successes. A stopword is a stopword in any case.
    """

    def _get_modifiable_indices(self, current_text):
        return {i for i, word in enumerate(current_text.words) if word.lower() not in self.stopwords}


class NumbersKept(PreTransformationConstraint):
    """No perturbation touches a word holding a digit ("850", "00", "2019", "2nd", "303XX")."""

    def _get_modifiable_indices(self, current_text):
        return {i for i, word in enumerate(current_text.words) if not any(c.isdigit() for c in word)}

    def extra_repr_keys(self):
        return []


@functools.lru_cache(maxsize=1)
def english_lexicon() -> frozenset[str]:
    """The spelling front end's public English lexicon (SymSpell's frequency list), lower-case."""
    from secure_ft.text.spelling import read_public_dictionary

    return frozenset(read_public_dictionary())


class TyposAreNonWords(Constraint):
    """A character edit must not produce an English word: a misspelling, not a real-word substitution."""

    lexicon = "symspellpy frequency_dictionary_en_82_765 (the spelling front end's public lexicon)"

    def __init__(self):
        super().__init__(compare_against_original=False)  # judges the new words alone
        self._words = english_lexicon()

    def _check_constraint(self, transformed_text, reference_text):
        return not any(transformed_text.words[i].lower() in self._words
                       for i in transformed_text.attack_attrs["newly_modified_indices"])

    def check_compatibility(self, transformation):
        return transformation_consists_of_word_swaps(transformation)

    def __getstate__(self):  # the lexicon is per process: rebuilt, not pickled
        state = self.__dict__.copy()
        state.pop("_words", None)
        return state

    def __setstate__(self, state):
        self.__dict__ = state
        self._words = english_lexicon()

    def extra_repr_keys(self):
        return ["lexicon"]


class IndependentSentenceEncoder(SBERT):
    """TextAttack's ``SBERT`` constraint on a local sentence-transformers folder, encodings cached.

    Parameters
    ----------
    model_path
        The encoder folder (:func:`audits.independent_encoder.independent_encoder`).
    sha256
        Its digest, shown in the recipe's description.
    threshold, window_size
        Minimum cosine similarity of the window of `window_size` words around the changes.
    """

    def __init__(self, model_path: str, sha256: str, threshold: float, window_size: int):
        try:
            super().__init__(threshold=threshold, metric="cosine", model_name=model_path, window_size=window_size,
                             skip_text_shorter_than_window=False, compare_against_original=True)
        except Exception as error:  # a damaged folder: say which and how to rebuild it
            raise AuditError(f"cannot load the independent sentence encoder {model_path} ({error}); delete the "
                             "folder and rerun the audit to rebuild it from the installed wheels") from None
        self.model.eval()
        self.model_path = model_path
        self.sha256 = sha256
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, sentences):
        missing = [s for s in dict.fromkeys(sentences) if s not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > _ENCODING_CACHE_LIMIT:
                self._cache.clear()
            with torch.inference_mode():
                vectors = self.model.encode(missing, convert_to_tensor=True, show_progress_bar=False, batch_size=64)
            for sentence, vector in zip(missing, vectors.clone()):
                self._cache[sentence] = vector
        return torch.stack([self._cache[s] for s in sentences])

    def extra_repr_keys(self):
        return ["model_path", "sha256", "threshold", "window_size", "metric"]


def constraint_label(constraint) -> str:
    """A short stable name for a constraint in rejection counts (its class name)."""
    return type(constraint).__name__


class CountingAttack(Attack):
    """TextAttack's ``Attack`` counting what each constraint turned away.

    ``rejections[name]``: candidate perturbations the constraint rejected (each counted once,
    by the first constraint that rejected it; constraints run in order, cheap ones first, and
    a candidate rejected is never shown to the model). ``positions_excluded[name]``: word
    positions a pre-transformation constraint kept out of a search step, summed over steps.
    ``candidates``: candidates generated. :meth:`take_counts` returns and resets them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.rejections: Counter = Counter({constraint_label(c): 0 for c in self.constraints})
        self.positions_excluded: Counter = Counter({constraint_label(c): 0 for c in self.pre_transformation_constraints})
        self.candidates = 0

    def take_counts(self) -> dict:
        counts = {"candidates": self.candidates, "rejected_by": dict(self.rejections),
                  "positions_excluded_by": dict(self.positions_excluded)}
        self._reset_counts()
        return counts

    def _get_transformations_uncached(self, current_text, original_text=None, **kwargs):
        words = len(current_text.words)
        for constraint in self.pre_transformation_constraints:
            self.positions_excluded[constraint_label(constraint)] += words - len(constraint(current_text, self.transformation))
        return super()._get_transformations_uncached(current_text, original_text, **kwargs)

    def _filter_transformations_uncached(self, transformed_texts, current_text, original_text=None):
        filtered = transformed_texts[:]
        self.candidates += len(filtered)
        for constraint in self.constraints:
            if not filtered:
                break
            reference = original_text if constraint.compare_against_original else current_text
            if reference is None:
                raise ValueError(f"{type(constraint).__name__} compares against the original text, which is missing")
            kept = constraint.call_many(filtered, reference)
            self.rejections[constraint_label(constraint)] += len(filtered) - len(kept)
            filtered = kept
        for candidate in transformed_texts:
            self.constraints_cache[(current_text, candidate)] = False
        for candidate in filtered:
            self.constraints_cache[(current_text, candidate)] = True
        return filtered
