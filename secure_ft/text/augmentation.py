"""Perturbed copies of a training text: DeepWordBug-style character edits and WordNet synonym swaps.

Training on perturbed copies makes a classifier see the edits an attacker makes. Under DP the
copies of example i may only depend on example i and on randomness that is not shared with
other examples: the copies then count as part of example i, and averaging the example's and
its copies' gradients before clipping ("augmentation multiplicity", De et al. 2022) leaves
each example's contribution bounded by the clipping norm, so ε is unchanged.

A copy is a pure function of (text, seed, example index, copy index): `copy_rng` derives an
independent generator for each triple from a hash, so the same triple always gives the same
copy and no two examples (or copies) share a random stream, whatever order a loader visits
them in.

What one copy changes
---------------------
``max(1, round(word_rate × words))`` words, chosen among the words that are not stopwords
(TextAttack's DeepWordBug leaves stopwords alone too; a text of stopwords only offers all its
words). Each chosen word gets, with the probabilities of the mix:

* a **character edit** of the DeepWordBug family: swap two neighbouring letters, substitute,
  delete or insert one letter (one of those that applies to the word, uniformly);
* a **synonym swap**: a single-word WordNet synonym that is not a WordNet antonym of the word
  or of any other lemma of its senses (WordNet's synsets hold some: hungry ~ thirsty, mother
  ~ father). A word with no such synonym gets a character edit instead.

Everything around the words (spaces, punctuation, digits) is kept; replacements follow the
original's casing.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Protocol

from secure_ft.errors import ConfigError

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
CHAR_EDITS = ("swap", "substitute", "delete", "insert")


def copy_rng(seed: int, example_index: int, copy_index: int) -> random.Random:
    """The random stream of one copy of one example: independent of every other (seed, index, copy)."""
    digest = hashlib.sha256(f"secure-ft/augmentation/{int(seed)}/{int(example_index)}/{int(copy_index)}".encode())
    return random.Random(int.from_bytes(digest.digest(), "big"))


class SynonymSource(Protocol):
    """Anything that gives a word's allowed replacements (sorted, never the word itself)."""

    def synonyms(self, word: str) -> tuple[str, ...]: ...

    def is_stopword(self, word: str) -> bool: ...


class WordNetSynonyms:
    """Single-word WordNet synonyms without antonyms, and the English stopwords, from `secure_ft.text.lexicon`.

    Parameters
    ----------
    resources_root
        The offline resource folder (default ``$SECURE_FT_RESOURCES`` or ``~/.cache/secure-ft``);
        WordNet and the stopwords are assembled there from local sources on first use.
    """

    def __init__(self, resources_root=None):
        from secure_ft.text import lexicon

        self._wordnet = lexicon.wordnet(resources_root)
        self._stopwords = lexicon.english_stopwords(resources_root)
        self._cache: dict[str, tuple[str, ...]] = {}
        self._antonyms: dict[str, frozenset[str]] = {}  # a lemma is a candidate of many words: look it up once

    def is_stopword(self, word: str) -> bool:
        return word.lower() in self._stopwords

    def synonyms(self, word: str) -> tuple[str, ...]:
        word = word.lower()
        if word not in self._cache:
            self._cache[word] = self._find(word)
        return self._cache[word]

    def _find(self, word: str) -> tuple[str, ...]:
        if self.is_stopword(word):
            return ()
        senses = self._wordnet.synsets(word)
        names = {lemma.name().lower() for sense in senses for lemma in sense.lemmas()}
        # antonyms of every lemma of the word's senses: siblings in a synset can be opposites
        antonyms = {antonym.name().lower() for sense in senses for lemma in sense.lemmas()
                    for antonym in lemma.antonyms()}
        allowed = []
        for name in sorted(names - {word} - antonyms):
            if not (name.isascii() and name.isalpha()) or self.is_stopword(name):
                continue  # multi-word lemmas (pay_off) and odd forms would not read as one word
            if word in self._antonyms_of(name):
                continue
            allowed.append(name)
        return tuple(allowed)

    def _antonyms_of(self, name: str) -> frozenset[str]:
        if name not in self._antonyms:
            self._antonyms[name] = frozenset(
                antonym.name().lower() for sense in self._wordnet.synsets(name) for lemma in sense.lemmas()
                if lemma.name().lower() == name for antonym in lemma.antonyms())
        return self._antonyms[name]


@dataclass(frozen=True)
class Perturber:
    """Makes perturbed copies of texts with a fixed mix, rate and seed.

    Parameters
    ----------
    char_edit_fraction, synonym_fraction
        Relative weights of the two kinds of change (normalised; both ≥ 0, not both 0).
    word_rate
        Fraction of a text's words changed in one copy (at least one word).
    seed
        The run's seed; combined with the example and copy index by `copy_rng`.
    synonyms
        Where synonyms and stopwords come from; None = character edits only, no stopword list.
    """

    char_edit_fraction: float = 0.5
    synonym_fraction: float = 0.5
    word_rate: float = 0.1
    seed: int = 0
    synonyms: SynonymSource | None = None

    def __post_init__(self):
        if self.char_edit_fraction < 0 or self.synonym_fraction < 0 or \
                self.char_edit_fraction + self.synonym_fraction <= 0:
            raise ConfigError("augmentation: char_edit_fraction and synonym_fraction must be ≥ 0 and not both 0")
        if not 0 < self.word_rate <= 1:
            raise ConfigError(f"augmentation: word_rate must be in (0, 1], not {self.word_rate}")
        if self.synonym_fraction > 0 and self.synonyms is None:
            raise ConfigError("augmentation: synonym_fraction > 0 needs a synonym source (WordNetSynonyms())")

    def copies(self, text: str, example_index: int, count: int) -> list[str]:
        """`count` perturbed copies of the text at `example_index` (copy k is `copy(text, example_index, k)`)."""
        return [self.copy(text, example_index, k) for k in range(count)]

    def copy(self, text: str, example_index: int, copy_index: int) -> str:
        """One perturbed copy: a pure function of (text, seed, example_index, copy_index)."""
        return perturb(text, copy_rng(self.seed, example_index, copy_index), self)


def perturb(text: str, rng: random.Random, perturber: Perturber) -> str:
    """`text` with ``max(1, round(word_rate × words))`` words changed, drawing only from `rng`."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    source = perturber.synonyms
    candidates = [i for i, match in enumerate(words) if source is None or not source.is_stopword(match.group())]
    candidates = candidates or list(range(len(words)))
    touched = min(len(candidates), max(1, round(perturber.word_rate * len(words))))
    synonym_share = perturber.synonym_fraction / (perturber.synonym_fraction + perturber.char_edit_fraction)
    replacements: dict[int, str] = {}
    for position in sorted(rng.sample(candidates, touched)):
        word = words[position].group()
        wants_synonym = rng.random() < synonym_share
        options = source.synonyms(word) if wants_synonym and source is not None else ()
        replacements[position] = _same_case(rng.choice(options), word) if options else edit_characters(word, rng)
    pieces, end = [], 0
    for position, match in enumerate(words):
        if position in replacements:
            pieces += [text[end:match.start()], replacements[position]]
            end = match.end()
    return "".join(pieces) + text[end:]


def edit_characters(word: str, rng: random.Random) -> str:
    """One DeepWordBug edit of `word`: neighbour swap, substitution, deletion or insertion of a letter."""
    letters = [i for i, char in enumerate(word) if char.isalpha()]
    edits = ["substitute", "insert"]
    if len(letters) >= 2:
        edits = ["swap", "substitute", "delete", "insert"]
    edit = rng.choice(edits)
    if edit == "swap":
        pairs = [i for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha()
                 and word[i].lower() != word[i + 1].lower()]
        if pairs:
            i = rng.choice(pairs)
            return word[:i] + word[i + 1] + word[i] + word[i + 2:]
        edit = "substitute"  # "committee": no two distinct neighbours swap visibly here
    if edit == "delete":
        i = rng.choice(letters)
        return word[:i] + word[i + 1:]
    if edit == "insert":
        i = rng.randrange(len(word) + 1)
        letter = rng.choice(_LETTERS)
        return word[:i] + (letter.upper() if word.isupper() else letter) + word[i:]
    i = rng.choice(letters)
    letter = rng.choice(_LETTERS.replace(word[i].lower(), ""))
    return word[:i] + (letter.upper() if word[i].isupper() else letter) + word[i + 1:]


def _same_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement.capitalize()
    return replacement
