"""Label-preserving attack recipes: the three families, constrained to what a human accepts.

Stock TextAttack recipes count any flip as a success, whatever the perturbation did to the
text: on the default model PWWS "won" with "I" → "iodin" and "job" → "speculate". An
adversarial example is a perturbation that keeps the text's meaning and its true label
(Morris et al. 2020, "Reevaluating Adversarial Examples in Natural Language", Findings of
EMNLP); these recipes keep each stock family's transformation and search and add the
validity constraints that paper and TextAttack's A2T recipe (Yoo & Qi 2021, "Towards
Improving Adversarial Training of NLP Models") use, built from TextAttack's own classes:

``deepwordbug-lp`` (character edits, DeepWordBug's four one-letter operations, greedy search)
    no edit of a stopword, a redaction mask or a word holding a digit (``NumbersKept``, policy
    ``numbers_kept``: a number's value is its meaning, "$850.00" → "$8q50.0" is another or an
    unreadable amount, not a misspelt word); each word edited at most once, by one character
    operation (``RepeatModification``); at most ``max_modification_rate`` of the words, never
    fewer than ``min_words_allowed`` (``MaxModificationRate``); an edited word is no English
    word (``TyposAreNonWords``, policy ``typos_are_non_words``: "form" → "from" is a real-word
    substitution whose meaning the typo rules cannot judge; DeepWordBug's threat model, Gao et
    al. 2018, is misspelt words); total Levenshtein distance at most
    ``max_text_edit_distance`` (``LevenshteinEditDistance``, DeepWordBug's own ε = 30).
    No sentence-similarity floor: misspellings move an encoder's embedding without changing
    the meaning, so the floor would reject valid typos.
``pwws-lp`` (WordNet synonym swaps, PWWS's weighted-saliency search) and
``embedding-swap-lp`` (nearest neighbours in word-embedding space, greedy deletion ranking)
    the same stopword / mask / number / budget constraints; the new word keeps the original's
    *predominant sense* (``PredominantSense``, policy ``predominant_sense``; replaces
    ``SynonymInTaggedSense``): it is a lemma of the original's first-listed WordNet synset in
    the part of speech of its Penn Treebank tag, and that synset is the new word's own
    first-listed one, so both words default to the same meaning (WordNet orders senses by
    SemCor frequency; the first-sense heuristic of McCarthy et al. 2004, "Finding Predominant
    Word Senses in Untagged Text", ACL). No masked language model installs offline, so this is
    the sense check; it is conservative and also rejects swaps a reader accepts ("immediately"
    → "directly"), which lowers the attack's power. For the embedding swap it stands in for
    counter-fitted vectors (Mrkšić et al. 2016, WordNet/PPDB synonymy injected into the
    vectors; not available offline). Then no new grammatical error (Morris et
    al. 2020 counted them with LanguageTool, a Java server downloaded on first use; offline,
    :mod:`audits._grammaticality` applies the principle with a dependency parser): the swapped
    word keeps its fine-grained Penn Treebank tag in its sentence (``PennTreebankTag``: no
    fix→fixing, day→days, make→made), an "a" / "an" before it still agrees (``ArticleAgreement``,
    LanguageTool's EN_A_VS_AN: no "an attempt" → "an try") and, re-parsed, its dependency relation, head and
    dependents (``ParseStability``); with ``predominant_sense: false``, WordNet swaps fall back
    to a synonym in any sense of the tagged part of speech (``SynonymInTaggedSense``: no
    "number" → "numerate"); no proper noun is swapped (``ProperNounsKept``: a name has no synonym);
    then the window of ``sentence_window`` words around the
    change keeps a cosine similarity of at least ``min_sentence_similarity`` under an
    *independent* sentence encoder (all-mpnet-base-v2, not the audited model's base encoder;
    ``SBERT``). The embedding swap also keeps its word-vector floor and rejects WordNet
    antonyms (its vectors are not counter-fitted).

Constraints run cheapest first (pre-transformation index filters, then word-level checks —
lexicon and WordNet lookups, cached — then the candidate parses, then the encoder) and every
candidate is filtered before the model is queried; the attack is a
:class:`~audits._validity_constraints.CountingAttack`, so the audit reports how many
candidates each constraint rejected.
"""

from __future__ import annotations

from pathlib import Path

from textattack.constraints.overlap import LevenshteinEditDistance
from textattack.constraints.pre_transformation import MaxModificationRate, RepeatModification
from textattack.goal_functions import UntargetedClassification
from textattack.search_methods import GreedyWordSwapWIR
from textattack.transformations import (
    CompositeTransformation,
    WordSwapEmbedding,
    WordSwapNeighboringCharacterSwap,
    WordSwapRandomCharacterDeletion,
    WordSwapRandomCharacterInsertion,
    WordSwapRandomCharacterSubstitution,
    WordSwapWordNet,
)

from audits._grammaticality import (
    ArticleAgreement,
    ParseStability,
    PennTreebankTag,
    ProperNounsKept,
    SynonymInTaggedSense,
)
from audits._validity_constraints import (
    CountingAttack,
    IndependentSentenceEncoder,
    NumbersKept,
    RedactionPlaceholders,
    StopwordsInAnyCase,
    TyposAreNonWords,
)
from audits._word_sense import PredominantSense

DEEPWORDBUG_LP, PWWS_LP, EMBEDDING_SWAP_LP = "deepwordbug-lp", "pwws-lp", "embedding-swap-lp"
LABEL_PRESERVING = (DEEPWORDBUG_LP, PWWS_LP, EMBEDDING_SWAP_LP)


def _index_constraints(validity) -> list:
    """Where an edit may go and how many: cheap, applied before any candidate is generated."""
    constraints = [RepeatModification(), StopwordsInAnyCase()]
    if validity.protect_redaction_placeholders:
        constraints.append(RedactionPlaceholders())
    if validity.numbers_kept:
        constraints.append(NumbersKept())
    constraints.append(MaxModificationRate(max_rate=float(validity.max_modification_rate),
                                           min_threshold=int(validity.min_words_allowed)))
    return constraints


def _meaning_constraints(validity, encoder) -> list:
    """Grammar first (one batched parse per sentence, shared by both checks), the sentence encoder last."""
    constraints = []
    if validity.part_of_speech:
        constraints += [ArticleAgreement(), ProperNounsKept(), PennTreebankTag()]
    if validity.parse_stability:
        constraints.append(ParseStability())
    constraints.append(IndependentSentenceEncoder(str(encoder.path), encoder.sha256,
                                                  threshold=float(validity.min_sentence_similarity),
                                                  window_size=int(validity.sentence_window)))
    return constraints


def build_deepwordbug_lp(model_wrapper, validity) -> CountingAttack:
    transformation = CompositeTransformation([
        WordSwapNeighboringCharacterSwap(), WordSwapRandomCharacterSubstitution(),
        WordSwapRandomCharacterDeletion(), WordSwapRandomCharacterInsertion(),
    ])
    non_words = [TyposAreNonWords()] if validity.typos_are_non_words else []  # a set lookup: before the distance
    constraints = [*_index_constraints(validity), *non_words,
                   LevenshteinEditDistance(int(validity.max_text_edit_distance))]
    return CountingAttack(UntargetedClassification(model_wrapper), constraints, transformation, GreedyWordSwapWIR())


def _sense_constraints(validity) -> list:
    """A swap keeps the word's meaning: its predominant WordNet sense (or, without that rule, a shared
    synset in the tagged part of speech). Reads one parse of the original: before any candidate parse."""
    if validity.predominant_sense:
        return [PredominantSense()]
    return [SynonymInTaggedSense()] if validity.part_of_speech else []


def build_pwws_lp(model_wrapper, validity, encoder) -> CountingAttack:
    constraints = [*_index_constraints(validity), *_sense_constraints(validity),
                   *_meaning_constraints(validity, encoder)]
    return CountingAttack(UntargetedClassification(model_wrapper), constraints, WordSwapWordNet(),
                          GreedyWordSwapWIR("weighted-saliency"))


def build_embedding_swap_lp(model_wrapper, validity, encoder, swap_settings, cache_dir: Path) -> CountingAttack:
    from textattack.constraints.semantics import WordEmbeddingDistance

    from audits._embedding_swap import WordNetAntonymFilter, _embedding_source, local_word_embedding

    source_model, source_tokenizer = _embedding_source(swap_settings.embedding, model_wrapper)
    embedding = local_word_embedding(source_model, source_tokenizer, swap_settings.max_candidates, cache_dir)
    constraints = [*_index_constraints(validity),
                   WordEmbeddingDistance(embedding=embedding, min_cos_sim=swap_settings.min_word_similarity),
                   WordNetAntonymFilter(), *_sense_constraints_for_embedding(validity),
                   *_meaning_constraints(validity, encoder)]
    transformation = WordSwapEmbedding(max_candidates=swap_settings.max_candidates, embedding=embedding)
    return CountingAttack(UntargetedClassification(model_wrapper), constraints, transformation,
                          GreedyWordSwapWIR(wir_method="delete"))


def _sense_constraints_for_embedding(validity) -> list:
    """Embedding neighbours: the predominant-sense rule (the offline stand-in for counter-fitted vectors)."""
    return [PredominantSense()] if validity.predominant_sense else []


def build_label_preserving(name: str, model_wrapper, validity, swap_settings, resources_root: Path,
                           cache_dir: Path) -> CountingAttack:
    """The label-preserving recipe `name` (one of :data:`LABEL_PRESERVING`) on `model_wrapper`."""
    if name == DEEPWORDBUG_LP:
        return build_deepwordbug_lp(model_wrapper, validity)
    from audits.independent_encoder import independent_encoder

    encoder = independent_encoder(resources_root)
    if name == PWWS_LP:
        return build_pwws_lp(model_wrapper, validity, encoder)
    return build_embedding_swap_lp(model_wrapper, validity, encoder, swap_settings, cache_dir)
