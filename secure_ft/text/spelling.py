"""A typo-correcting front end: the same spelling correction before training, audits and serving.

Character-level attacks (DeepWordBug: swap, substitute, delete or insert a letter) turn known
words into strings the tokenizer splits into unfamiliar word pieces. Mapping every unknown word
back to the closest known word undoes most of those edits before the model sees the text, so
the front end must sit in front of the model everywhere the model is used: when training,
inside the robustness audit's model wrapper, and in serving. It is saved inside the model
folder (``front_end/``) and travels, signed, with the weights.

How a text is corrected
-----------------------
* Words are runs of ASCII letters, with inner apostrophes (``don't``); everything else
  (spaces, punctuation, digits, other scripts) is copied through unchanged.
* A word the dictionary knows, a word shorter than ``min_word_length``, a run of capital X's
  (the ``XXXX`` redactions of complaint data) and an all-capitals word of at most
  ``acronym_max_length`` letters (5: FDIC, HIPAA, CFPB — acronyms and initialisms are short)
  are left as they are. Longer all-capitals words are corrected like any other: they are
  section headings and shouted text ("PROCEURE" → "PROCEDURE"), and leaving them alone made
  every heading of a clinical note a free target for one-letter typos. A long acronym the
  dictionary does not know only changes when a real word is within the edit limit.
  (Front ends saved before this rule, ``format_version`` 1, leave every all-capitals word
  alone, so a verified model keeps correcting text exactly as it did when it was audited.)
* Any other word is looked up with SymSpell (Damerau-OSA edit distance, at most
  ``max_edit_distance``; words of four letters or fewer at most 1, where 2 edits could reach
  almost anything); the closest suggestion wins, then the most frequent, then the
  alphabetically first, so the result does not depend on dictionary order. No suggestion:
  the word stays.
* Casing follows the original: ``Paymnet`` → ``Payment``, ``HISTRY`` → ``HISTORY``; anything
  else comes out lower-case.

The dictionary
--------------
Public resources only, by default: SymSpell's shipped English frequency dictionary
(``frequency_dictionary_en_82_765.txt``) plus the base tokenizer's whole words (vocabulary
entries made of letters, not ``##`` pieces), which carry the domain's spellings. Words from
the user's own training data (``extra_words``) are opt-in: they are not covered by the
model's differential-privacy guarantee (the saved dictionary shows which words occurred in the
data), so the saved config says ``uses_private_vocabulary: true`` and reports must say so.
Their counts are never used: an extra word gets count 1 unless the public dictionary knows it.

On disk (plain text, never pickle; written to a temporary folder and renamed into place)::

    model_dir/front_end/config.json       settings, sources, sha256 of the dictionary
    model_dir/front_end/dictionary.txt    word<TAB>count, one a line, sorted by word
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from secure_ft.errors import ModelError
from secure_ft.records.atomic_files import atomic_write_folder

FOLDER = "front_end"
CONFIG_FILE = "config.json"
DICTIONARY_FILE = "dictionary.txt"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)  # 1: all-capitals words never corrected
ACRONYM_MAX_LENGTH = 5  # all-capitals words this long or shorter are taken as acronyms
KIND = "symspell"
PUBLIC_DICTIONARY = "frequency_dictionary_en_82_765.txt"
PREFIX_LENGTH = 7  # SymSpell's default; part of the saved config because it shapes the index
_CACHE_LIMIT = 500_000  # distinct unknown words remembered (a few tens of MB at most)

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SHORT_WORD = 4  # words this long or shorter get at most one edit
_REDACTION = re.compile(r"X+")


def public_dictionary_path() -> Path:
    """SymSpell's shipped English word-frequency list (inside the installed package)."""
    try:
        import symspellpy
    except ImportError:
        raise ModelError("the spelling front end needs symspellpy; run `pip install symspellpy==6.10.1`") from None
    path = Path(symspellpy.__file__).parent / PUBLIC_DICTIONARY
    if not path.is_file():
        raise ModelError(f"{path}: symspellpy's English dictionary is missing; reinstall it with "
                         "`pip install --force-reinstall symspellpy==6.10.1`")
    return path


def read_public_dictionary() -> dict[str, int]:
    """``{word: count}`` of SymSpell's shipped English dictionary ("word count" lines)."""
    path = public_dictionary_path()
    words: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ModelError(f"{path}:{number}: not a 'word count' line; reinstall symspellpy")
        words[parts[0].lower()] = max(words.get(parts[0].lower(), 0), int(parts[1]))
    return words


def text_words(texts: Iterable[str]) -> set[str]:
    """The distinct words (as the front end reads them) of `texts`, lower-case: candidate ``extra_words``."""
    return {match.group().lower() for text in texts for match in _WORD.finditer(str(text))}


def tokenizer_words(tokenizer_or_vocab: Any) -> list[str]:
    """The whole words of a tokenizer's vocabulary: ASCII-letter entries, not ``##`` pieces or ``[CLS]``."""
    vocab = tokenizer_or_vocab.get_vocab() if hasattr(tokenizer_or_vocab, "get_vocab") else tokenizer_or_vocab
    return sorted({token.lower() for token in vocab if token.isascii() and token.isalpha()})


class SpellingFrontEnd:
    """Per-word typo correction with SymSpell over a fixed dictionary.

    Parameters
    ----------
    dictionary
        ``{word: count}``; words are stored lower-case. Counts rank suggestions at equal distance.
    max_edit_distance
        Largest Damerau-OSA distance of a correction (words of four letters or fewer: at most 1).
    min_word_length
        Shorter words are never changed.
    uses_private_vocabulary
        True when the dictionary holds words taken from the training data (outside the DP guarantee).
    sources
        Where the words came from, for the saved config and reports.

    Examples
    --------
    >>> front_end = SpellingFrontEnd.from_public_resources(tokenizer)   # doctest: +SKIP
    >>> front_end.correct("My paymnet was Recieved late!")              # doctest: +SKIP
    'My payment was Received late!'
    """

    def __init__(self, dictionary: Mapping[str, int], *, max_edit_distance: int = 2, min_word_length: int = 3,
                 uses_private_vocabulary: bool = False, sources: Iterable[str] = (),
                 acronym_max_length: int | None = ACRONYM_MAX_LENGTH):
        from symspellpy import SymSpell

        if not 0 <= int(max_edit_distance) <= 3:
            raise ValueError(f"max_edit_distance must be 0 to 3, not {max_edit_distance}")
        self.max_edit_distance = int(max_edit_distance)
        self.min_word_length = int(min_word_length)
        # None: every all-capitals word is left alone (how format_version 1 front ends behave)
        self.acronym_max_length = None if acronym_max_length is None else int(acronym_max_length)
        self.uses_private_vocabulary = bool(uses_private_vocabulary)
        self.sources = list(sources)
        self.words: dict[str, int] = {}
        for word, count in dictionary.items():
            key = word.lower()
            self.words[key] = max(self.words.get(key, 0), int(count), 1)
        self.words = dict(sorted(self.words.items()))  # one insertion order, whatever the input's
        self._symspell = SymSpell(max_dictionary_edit_distance=max(self.max_edit_distance, 1),
                                  prefix_length=PREFIX_LENGTH)
        for word, count in self.words.items():
            self._symspell.create_dictionary_entry(word, count)
        self._cache: dict[str, str | None] = {}

    @classmethod
    def from_public_resources(cls, tokenizer: Any = None, *, max_edit_distance: int = 2, min_word_length: int = 3,
                              extra_words: Iterable[str] | None = None) -> "SpellingFrontEnd":
        """SymSpell's English dictionary + the tokenizer's whole words (+ opt-in `extra_words`).

        Parameters
        ----------
        tokenizer
            The base model's tokenizer (or its vocabulary: a mapping or list of tokens); None = none.
        extra_words
            Words from the user's own data. Marks the front end ``uses_private_vocabulary``.
        """
        words = read_public_dictionary()
        sources = [f"symspellpy {PUBLIC_DICTIONARY} ({len(words)} words)"]
        if tokenizer is not None:
            vocabulary = tokenizer_words(tokenizer)
            for word in vocabulary:
                words.setdefault(word, 1)
            sources.append(f"tokenizer whole words ({len(vocabulary)} words)")
        private = extra_words is not None
        if private:
            extra = sorted({word.lower() for word in extra_words if _WORD.fullmatch(word)})
            for word in extra:
                words.setdefault(word, 1)  # the word only: private counts would say more
            sources.append(f"training data ({len(extra)} words, outside the DP guarantee)")
        return cls(words, max_edit_distance=max_edit_distance, min_word_length=min_word_length,
                   uses_private_vocabulary=private, sources=sources)

    # -- correcting -----------------------------------------------------------------------------

    def correct(self, text: str) -> str:
        """`text` with every unknown word replaced by its closest known word (see the module docstring)."""
        return _WORD.sub(lambda match: self.correct_word(match.group()), text)

    def correct_all(self, texts: Iterable[str]) -> list[str]:
        return [self.correct(text) for text in texts]

    __call__ = correct

    def correct_word(self, word: str) -> str:
        """One word, corrected (or unchanged)."""
        if len(word) < self.min_word_length or _REDACTION.fullmatch(word):
            return word
        all_capitals = word.isupper()
        if all_capitals and (self.acronym_max_length is None or len(word) <= self.acronym_max_length):
            return word
        lower = word.lower()
        if lower in self.words:
            return word
        if lower in self._cache:
            best = self._cache[lower]
        else:
            best = self._lookup(lower)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[lower] = best
        if best is None:
            return word
        if all_capitals:
            return best.upper()
        return best.capitalize() if word[0].isupper() and word[1:].islower() else best

    def _lookup(self, word: str) -> str | None:
        from symspellpy import Verbosity

        distance = min(self.max_edit_distance, 1 if len(word) <= _SHORT_WORD else self.max_edit_distance)
        if distance == 0:
            return None
        suggestions = self._symspell.lookup(word, Verbosity.CLOSEST, max_edit_distance=distance)
        if not suggestions:
            return None
        # closest, then most frequent, then alphabetical: independent of SymSpell's internal order
        return min(suggestions, key=lambda item: (item.distance, -item.count, item.term)).term

    # -- saving and loading ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The settings that rebuild this front end, as saved in ``front_end/config.json``."""
        from importlib.metadata import version

        config = {
            "kind": KIND,
            "format_version": FORMAT_VERSION if self.acronym_max_length is not None else 1,
            "max_edit_distance": self.max_edit_distance,
            "min_word_length": self.min_word_length,
            "prefix_length": PREFIX_LENGTH,
            "uses_private_vocabulary": self.uses_private_vocabulary,
            "sources": self.sources,
            "words": len(self.words),
            "dictionary": DICTIONARY_FILE,
            "dictionary_sha256": hashlib.sha256(self._dictionary_text().encode("utf-8")).hexdigest(),
            "symspellpy_version": version("symspellpy"),
        }
        if self.acronym_max_length is not None:  # format_version 1 has no such field
            config["acronym_max_length"] = self.acronym_max_length
        return config

    def _dictionary_text(self) -> str:
        return "".join(f"{word}\t{count}\n" for word, count in self.words.items())

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write ``model_dir/front_end/`` (replacing any earlier one) atomically; returns that folder."""
        # as public as the weights it sits beside
        return atomic_write_folder(Path(model_dir) / FOLDER, {
            DICTIONARY_FILE: self._dictionary_text().encode("utf-8"),
            CONFIG_FILE: (json.dumps(self.config(), indent=2) + "\n").encode("utf-8"),
        })

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> "SpellingFrontEnd | None":
        """The front end saved in `model_dir`, or None when the folder has none.

        Raises
        ------
        ModelError
            ``front_end/`` exists but its config or dictionary is unreadable, corrupt or altered.
        """
        folder = Path(model_dir) / FOLDER
        if not folder.exists():
            return None
        config = _read_config(folder / CONFIG_FILE)
        dictionary = _read_dictionary(folder / config.get("dictionary", DICTIONARY_FILE), config)
        return cls(dictionary, max_edit_distance=config["max_edit_distance"],
                   min_word_length=config["min_word_length"],
                   uses_private_vocabulary=config["uses_private_vocabulary"], sources=config.get("sources", []),
                   acronym_max_length=config.get("acronym_max_length"))

    def __repr__(self) -> str:
        return (f"SpellingFrontEnd({len(self.words)} words, max_edit_distance={self.max_edit_distance}, "
                f"uses_private_vocabulary={self.uses_private_vocabulary})")


_FIX = "save the front end again (SpellingFrontEnd.save) or re-export the model"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; the front_end folder is incomplete — {_FIX}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path}: not a readable UTF-8 JSON file ({error}); {_FIX}") from None
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise ModelError(f"{path}: not a spelling front end config (kind must be {KIND!r}); {_FIX}")
    version = config.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS or isinstance(version, bool):
        raise ModelError(f"{path}: format_version {version!r} is not one of {list(READABLE_FORMAT_VERSIONS)}; "
                         "upgrade secure-ft or " + _FIX)
    if version == 1 and "acronym_max_length" in config:
        raise ModelError(f"{path}: format_version 1 has no 'acronym_max_length' (it leaves every all-capitals "
                         f"word alone); the config was altered — {_FIX}")
    if version >= 2:
        length = config.get("acronym_max_length")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ModelError(f"{path}: field 'acronym_max_length' is missing or not a non-negative int; {_FIX}")
    for field, kind in (("max_edit_distance", int), ("min_word_length", int), ("uses_private_vocabulary", bool)):
        if not isinstance(config.get(field), kind) or (kind is int and isinstance(config.get(field), bool)):
            raise ModelError(f"{path}: field {field!r} is missing or not {kind.__name__}; {_FIX}")
    if config.get("prefix_length", PREFIX_LENGTH) != PREFIX_LENGTH:
        raise ModelError(f"{path}: prefix_length {config['prefix_length']} is not {PREFIX_LENGTH}; {_FIX}")
    if Path(config.get("dictionary", DICTIONARY_FILE)).name != config.get("dictionary", DICTIONARY_FILE):
        raise ModelError(f"{path}: 'dictionary' must be a file name inside front_end/; {_FIX}")
    return config


def _read_dictionary(path: Path, config: dict[str, Any]) -> dict[str, int]:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; the front_end folder is incomplete — {_FIX}") from None
    except UnicodeDecodeError as error:
        raise ModelError(f"{path}: not UTF-8 text (byte {error.start}); the file is corrupt — {_FIX}") from None
    expected = config.get("dictionary_sha256")
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise ModelError(f"{path}: its sha256 does not match front_end/config.json; the dictionary was altered "
                         f"or damaged — {_FIX}")
    words: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        word, tab, count = line.partition("\t")
        if not tab or not word or not count.isdigit() or int(count) < 1:
            raise ModelError(f"{path}:{number}: expected 'word<TAB>count' with a positive count, got {line[:60]!r}; "
                             f"{_FIX}")
        words[word] = int(count)
    if not words:
        raise ModelError(f"{path}: the dictionary is empty; {_FIX}")
    return words
