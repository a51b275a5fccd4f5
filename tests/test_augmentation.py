"""Perturbed copies for training: deterministic per (seed, example, copy), rates, mix, antonym filter; the config section."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from secure_ft.errors import ConfigError
from secure_ft.records.robust_training_config import RobustTrainingConfig
from secure_ft.text.augmentation import Perturber, WordNetSynonyms, copy_rng, edit_characters

WORDS = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
TEXT = ("My mortgage lender charged a late payment fee on 03/15/2019, although the payment "
        "was received on time; the servicer refused to refund it and reported it to the credit bureau.")


@pytest.fixture(scope="module")
def synonyms(tmp_path_factory) -> WordNetSynonyms:
    """WordNet + stopwords assembled from the machine's local copies into a private resource folder."""
    return WordNetSynonyms(tmp_path_factory.mktemp("secure-ft-resources"))


def words(text: str) -> list[str]:
    return WORDS.findall(text)


def changed_positions(original: str, copy: str) -> list[int]:
    before, after = words(original), words(copy)
    assert len(before) == len(after), (original, copy)
    return [i for i, (a, b) in enumerate(zip(before, after)) if a != b]


def skeleton(text: str) -> str:
    """Everything but the words: spaces, punctuation, digits."""
    return WORDS.sub("_", text)


def damerau_one(a: str, b: str) -> bool:
    """b is a at Damerau distance exactly 1 (swap of neighbours, substitution, deletion, insertion)."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


# -- randomness ----------------------------------------------------------------------------------

def test_copy_rng_is_a_pure_function_of_seed_example_and_copy():
    assert copy_rng(7, 3, 1).random() == copy_rng(7, 3, 1).random()
    draws = {(seed, example, copy): copy_rng(seed, example, copy).random()
             for seed in (0, 1) for example in range(20) for copy in range(3)}
    assert len(set(draws.values())) == len(draws)  # no two triples share a stream
    assert copy_rng(0, 1, 12).random() != copy_rng(0, 11, 2).random()  # no "1/12" vs "11/2" collisions


def test_same_seed_example_and_copy_give_the_same_copy_in_any_order(synonyms):
    first = Perturber(word_rate=0.2, seed=5, synonyms=synonyms)
    again = Perturber(word_rate=0.2, seed=5, synonyms=synonyms)
    forward = [first.copies(TEXT, index, 3) for index in range(6)]
    backward = [again.copies(TEXT, index, 3) for index in reversed(range(6))][::-1]
    assert forward == backward
    assert again.copy(TEXT, 4, 2) == forward[4][2]
    assert len({copy for copies in forward for copy in copies}) == 18  # all different
    assert Perturber(word_rate=0.2, seed=6, synonyms=synonyms).copies(TEXT, 0, 3) != forward[0]


def test_examples_do_not_share_randomness():
    """The same text at two indices is perturbed differently; an example's copy ignores the others."""
    perturber = Perturber(char_edit_fraction=1.0, synonym_fraction=0.0, word_rate=0.3, seed=0)
    alone = perturber.copy(TEXT, 17, 0)
    for index in range(17):  # visiting other examples first must not matter
        perturber.copy(TEXT, index, 0)
    assert perturber.copy(TEXT, 17, 0) == alone
    at_other_indices = {perturber.copy(TEXT, index, 0) for index in range(10)}
    assert len(at_other_indices) == 10


# -- what a copy changes ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_rate_sets_how_many_words_change_and_stopwords_stay(synonyms, rate):
    perturber = Perturber(char_edit_fraction=1.0, synonym_fraction=0.0, word_rate=rate, seed=1, synonyms=synonyms)
    expected = max(1, round(rate * len(words(TEXT))))
    for index in range(10):
        copy = perturber.copy(TEXT, index, 0)
        positions = changed_positions(TEXT, copy)
        assert len(positions) == expected
        assert not any(synonyms.is_stopword(words(TEXT)[i]) for i in positions)
        assert skeleton(copy) == skeleton(TEXT)  # punctuation, digits and spacing untouched


def test_at_least_one_word_changes():
    perturber = Perturber(char_edit_fraction=1.0, synonym_fraction=0.0, word_rate=0.001, seed=0)
    assert len(changed_positions(TEXT, perturber.copy(TEXT, 0, 0))) == 1
    assert len(changed_positions("ok", perturber.copy("ok", 0, 0))) == 1
    assert perturber.copy("12/03 -- $40", 0, 0) == "12/03 -- $40"  # nothing to change


def test_character_edits_are_single_deepwordbug_edits():
    perturber = Perturber(char_edit_fraction=1.0, synonym_fraction=0.0, word_rate=1.0, seed=3)
    kinds = set()
    for index in range(30):
        copy = perturber.copy(TEXT, index, 0)
        for a, b in zip(words(TEXT), words(copy)):
            assert damerau_one(a, b), (a, b)
            kinds.add("swap" if sorted(a) == sorted(b) else "delete" if len(b) < len(a)
                      else "insert" if len(b) > len(a) else "substitute")
    assert kinds == {"swap", "delete", "insert", "substitute"}


def test_edit_characters_keeps_casing():
    rng = copy_rng(0, 0, 0)
    for _ in range(50):
        assert edit_characters("FCRA", rng).isupper()
        edited = edit_characters("x", rng)
        assert edited != "x" and edited.isalpha()


def test_synonym_swaps_use_wordnet_synonyms(synonyms):
    perturber = Perturber(char_edit_fraction=0.0, synonym_fraction=1.0, word_rate=0.3, seed=2, synonyms=synonyms)
    swapped = 0
    for index in range(10):
        copy = perturber.copy(TEXT, index, 0)
        for i in changed_positions(TEXT, copy):
            before, after = words(TEXT)[i], words(copy)[i]
            options = synonyms.synonyms(before)
            if options:
                assert after.lower() in options
                assert after[0].isupper() == before[0].isupper()
                swapped += 1
            else:  # no allowed synonym: falls back to a character edit
                assert damerau_one(before, after)
    assert swapped >= 10
    assert "defrayal" in synonyms.synonyms("payment") or "requital" in synonyms.synonyms("payment")


def test_mix_sets_the_share_of_synonym_swaps(synonyms):
    text = "payment mortgage lender refund bureau charge late received refused reported " * 3
    perturber = Perturber(char_edit_fraction=0.75, synonym_fraction=0.25, word_rate=1.0, seed=0, synonyms=synonyms)
    synonym_swaps = total = 0
    for index in range(40):
        for a, b in zip(words(text), words(perturber.copy(text, index, 0))):
            total += 1
            synonym_swaps += b.lower() in synonyms.synonyms(a)
    assert 0.17 < synonym_swaps / total < 0.33


def test_antonyms_and_stopwords_are_never_synonyms(synonyms):
    wordnet = synonyms._wordnet
    for word, antonym in (("hungry", "thirsty"), ("mother", "father"), ("king", "queen")):
        raw = {lemma.name() for sense in wordnet.synsets(word) for lemma in sense.lemmas()}
        assert antonym in raw  # WordNet puts them in one of the word's synsets...
        assert antonym not in synonyms.synonyms(word)  # ...and the filter takes them out
    assert synonyms.synonyms("the") == () and synonyms.synonyms("and") == ()
    for word in ("payment", "late", "refuse", "report", "good", "charge"):
        options = synonyms.synonyms(word)
        assert word not in options and options == tuple(sorted(options))
        assert not any(synonyms.is_stopword(option) or not option.isalpha() for option in options)
    assert "bad" not in synonyms.synonyms("good") and "evil" not in synonyms.synonyms("good")


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="word_rate"):
        Perturber(word_rate=0)
    with pytest.raises(ConfigError, match="not both 0"):
        Perturber(char_edit_fraction=0, synonym_fraction=0)
    with pytest.raises(ConfigError, match="synonym source"):
        Perturber(synonym_fraction=0.5)


# -- the config section -----------------------------------------------------------------------------

def test_robust_training_config_defaults_and_documentation():
    config = RobustTrainingConfig()
    assert config.augmentation_copies == 0 and config.front_end == "spelling"
    assert config.front_end_extra_words_from_training_data is False
    assert config.front_end_max_edit_distance == 2
    assert all(field.description for field in RobustTrainingConfig.model_fields.values())


def test_robust_training_config_refuses_bad_values():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RobustTrainingConfig(copies=2)
    with pytest.raises(ValidationError, match="must add up to 1"):
        RobustTrainingConfig(augmentation_copies=2, char_edit_fraction=0.5, synonym_fraction=0.2)
    with pytest.raises(ValidationError, match="needs front_end: spelling"):
        RobustTrainingConfig(front_end="none", front_end_extra_words_from_training_data=True)
    with pytest.raises(ValidationError):
        RobustTrainingConfig(front_end="autocorrect")
    assert RobustTrainingConfig(augmentation_copies=4, char_edit_fraction=1.0, synonym_fraction=0.0,
                                front_end="spelling", front_end_extra_words_from_training_data=True)


def test_wordnet_reader_answers_english_lookups_as_nltk_own(synonyms):
    """The reader skips NLTK's mapping to another WordNet version (multilingual data only): same synonyms."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from secure_ft.text import lexicon

    ours = synonyms._wordnet
    assert ours.map30 is None  # the mapping was not built
    stock = WordNetCorpusReader(ours.root.path, None)  # NLTK's own constructor, mapping included
    assert stock.map30  # what the skipped step builds, and all it builds
    reference = WordNetSynonyms.__new__(WordNetSynonyms)
    reference.__dict__.update(synonyms.__dict__, _wordnet=stock, _cache={}, _antonyms={})
    words_checked = sorted(set(w.lower() for w in words(TEXT))) + ["good", "bad", "happy", "fast", "light", "run"]
    for word in words_checked:
        assert synonyms.synonyms(word) == reference.synonyms(word), word
        assert ours.synsets(word) == stock.synsets(word), word
    assert "bad" not in synonyms.synonyms("good") and synonyms.synonyms("happy")
    assert lexicon.wordnet(synonyms_root(synonyms)) is ours  # opened once per folder


def synonyms_root(source: WordNetSynonyms):
    """The resource folder a `WordNetSynonyms` was opened from (its WordNet lives in nltk_data/corpora/wordnet)."""
    from pathlib import Path

    return Path(source._wordnet.root.path).parents[2]
