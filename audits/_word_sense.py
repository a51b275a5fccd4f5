"""Word sense of a word swap: both words must default to the same WordNet meaning.

A synonym in *some* sense is not a synonym where the word stands: with a shared synset in the
tagged part of speech (:class:`audits._grammaticality.SynonymInTaggedSense`) the default model's
word-swap attacks still got "meet my obligation" → "fit my obligation" (fit shares a rare sense
of meet), "no notification" → "no telling", "I requested a loan" → "I inquired a loan".
Deciding which sense a word has in its sentence is word-sense disambiguation; the offline
proxy here is its classic baseline, the predominant (first) sense:

:class:`PredominantSense`
    WordNet orders a word's senses by their frequency in the sense-tagged SemCor corpus, so its
    first-listed synset is the word's predominant sense — the heuristic that is hard to beat
    in WSD (McCarthy, Koeling, Weeds & Carroll 2004, "Finding Predominant Word Senses in
    Untagged Text", ACL). The new word must be a lemma of the *original* word's first-listed
    synset in the WordNet part of speech of the original's Penn Treebank tag, and that same
    synset must be the *new* word's own first-listed synset in that part of speech: a reader
    who meets the new word reads its predominant sense, so both words must default to the same
    meaning. Multi-word lemmas ("call_for") are never candidates.

    Two more conditions, added after the first read of the default model's successes found
    what the rule above lets through (each follows from the same principle, and neither looks
    at the audited model):

    * *The first sense must be the word's majority sense.* The heuristic guesses the sense a
      word has in its sentence; it is right more often than not only where the first sense
      covers more than half of the word's sense-tagged SemCor occurrences (WordNet's lemma
      counts; McCarthy et al. 2004, §1, on the skew that makes the heuristic work). "meet" (as
      in "meet my obligation") has its first sense, "come together", in 49 of 231 tagged
      uses (21%): the guess is more likely wrong than right, so "meet" gets no synonym. The
      same holds for the new word, which a reader reads in its own most likely sense. A word
      with no tagged occurrence has no evidence and no synonym.
    * *A swap replaces the lemma, never the inflection.* The new word is another lemma than
      the original ("met" is "meet" inflected, not a synonym of it) and is that lemma's form
      for the original's Penn Treebank tag (lemminflect's English inflection tables): "sell"
      (VB) → "sold" and "started" (VBD) → "begun" (only VBN) are rejected, "bought" (VBN) →
      "purchased" is kept. The contextual tag of the re-parsed sentence cannot see this:
      the parser tags "met" and "sold" VB after "to", and "begun" VBD after "and".

No masked language model installs offline, so this is the sense check; it is conservative on
purpose: it also rejects swaps a reader accepts ("immediately" → "directly": "directly" reads
first as "in a direct manner"), which lowers the attack's power, and its rejections are counted
like every other constraint's. For the embedding swap it is the offline stand-in for
counter-fitted vectors (Mrkšić et al. 2016, built by injecting WordNet/PPDB synonymy into the
vectors; a download not available here): a neighbour must be a WordNet synonym in the
predominant sense.
"""

from __future__ import annotations

import functools

from audits._grammaticality import _WORDNET_POS, SynonymInTaggedSense

_SENSE_CACHE = 200_000
MAJORITY = 0.5  # the first sense must cover more than half of a word's tagged occurrences


@functools.lru_cache(maxsize=_SENSE_CACHE)
def first_synset(word: str, pos: str) -> str | None:
    """Name of `word`'s first-listed WordNet synset in part of speech `pos` (NLTK's order), or None.

    NLTK reduces an inflected form to its lemma (morphy: "requested" → "request"), and for
    adjectives (``a``) lists satellites (``s``) in the same frequency order.
    """
    from nltk.corpus import wordnet

    synsets = wordnet.synsets(word.lower(), pos=pos)
    return synsets[0].name() if synsets else None


@functools.lru_cache(maxsize=_SENSE_CACHE)
def lemma_of(word: str, pos: str) -> str:
    """`word`'s WordNet base form in `pos` (morphy: "sold" → "sell", "met" → "meet"), or the word itself."""
    from nltk.corpus import wordnet

    forms = wordnet._morphy(word.lower(), pos)
    if not forms and pos == "a":
        forms = wordnet._morphy(word.lower(), "s")
    return forms[0] if forms else word.lower()


@functools.lru_cache(maxsize=_SENSE_CACHE)
def first_sense_share(word: str, pos: str) -> float:
    """Share of `word`'s sense-tagged SemCor occurrences in `pos` that are its first-listed sense (0 with none)."""
    from nltk.corpus import wordnet

    lemma = lemma_of(word, pos)
    counts = [sum(item.count() for item in synset.lemmas() if item.name().lower() == lemma)
              for synset in wordnet.synsets(lemma, pos=pos)]
    total = sum(counts)
    return counts[0] / total if total else 0.0


_UNIVERSAL_POS = {"N": "NOUN", "V": "VERB", "J": "ADJ", "R": "ADV"}  # first letter of a Penn Treebank tag


def swaps_the_lemma(original: str, new: str, pos: str) -> bool:
    """`new` is another lemma than `original` (WordNet's base forms in `pos`)."""
    return lemma_of(new, pos) != lemma_of(original, pos)


@functools.lru_cache(maxsize=_SENSE_CACHE)
def inflected_as(new: str, tag: str) -> bool:
    """`new` is, for one of its lemmas, that lemma's form for Penn Treebank `tag` (lemminflect's tables)."""
    from lemminflect import getAllLemmas, getInflection

    universal = _UNIVERSAL_POS.get(tag[:1])
    if universal is None:
        return False
    word = new.lower()
    lemmas = getAllLemmas(word, upos=universal).get(universal, ())
    return any(word in (form.lower() for form in getInflection(lemma, tag=tag)) for lemma in lemmas)


@functools.lru_cache(maxsize=_SENSE_CACHE)
def keeps_predominant_sense(original: str, new: str, pos: str) -> bool:
    """Whether `new` and `original` share their first-listed synset in `pos` (new one word, a lemma of it),
    that synset is each word's majority sense in SemCor, and the swap replaces the lemma, not the inflection."""
    from nltk.corpus import wordnet

    if "_" in new or " " in new or not new.strip():
        return False
    if not swaps_the_lemma(original, new, pos):
        return False
    if first_sense_share(original, pos) <= MAJORITY or first_sense_share(new, pos) <= MAJORITY:
        return False
    sense = first_synset(original, pos)
    if sense is None or first_synset(new, pos) != sense:
        return False
    lemmas = {name.lower() for name in wordnet.synset(sense).lemma_names()}
    forms = {new.lower(), *(wordnet._morphy(new.lower(), pos) or [])}
    if pos == "a":  # NLTK's morphy knows no satellite "s"; adjective forms are the adjective's
        forms |= set(wordnet._morphy(new.lower(), "s") or [])
    return bool(lemmas & forms)


class PredominantSense(SynonymInTaggedSense):
    """A word swap keeps the predominant sense: both words' first-listed WordNet synset is the same one.

    The part of speech is the WordNet one of the original's fine-grained Penn Treebank tag in
    its sentence (one parse of the original, cached: no candidate is parsed here). A word whose
    tag has no WordNet part of speech (a pronoun, a preposition, a number) has no synonym.
    """

    lexicon = "WordNet 3.0, first-listed synset (SemCor frequency order)"

    @staticmethod
    def _synonym(original: str, new: str, tag: str) -> bool:  # the per-word judgement the parent filters with
        pos = _WORDNET_POS.get(tag[:1])
        return (pos is not None and keeps_predominant_sense(original.lower(), new.lower(), pos)
                and inflected_as(new, tag))
