"""The typo-correcting front end: what it corrects, what it leaves alone, and its folder inside a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_ft.errors import ModelError
from secure_ft.text.models import load_front_end
from secure_ft.text.spelling import SpellingFrontEnd, tokenizer_words


@pytest.fixture(scope="module")
def public_front_end() -> SpellingFrontEnd:
    """SymSpell's English dictionary + a made-up domain word standing in for the tokenizer's vocabulary."""
    return SpellingFrontEnd.from_public_resources(["[CLS]", "##ing", "zorblax", "payment", "é", "42"])


def test_corrects_typos_and_keeps_punctuation_digits_and_casing(public_front_end):
    text = "My paymnet of $1,200.50 was recieved on 03/15!! Morgage (FCRA) with XXXX; I'm ok."
    assert public_front_end.correct(text) == \
        "My payment of $1,200.50 was received on 03/15!! Mortgage (FCRA) with XXXX; I'm ok."


def test_known_short_and_capitalised_words_stay(public_front_end):
    clean = "The lender charged an extra fee and I disputed it with the bureau."
    assert public_front_end.correct(clean) == clean
    assert public_front_end.correct_word("bq") == "bq"  # shorter than min_word_length
    assert public_front_end.correct_word("XXXQX") == "XXXQX"  # five capitals or fewer: an acronym
    assert public_front_end.correct_word("XXXXXXXX") == "XXXXXXXX"  # a redaction, however long
    assert public_front_end.correct_word("Cerdit") == "Credit"
    assert public_front_end.correct_word("qqqqqqqqqz") == "qqqqqqqqqz"  # nothing within distance 2


def test_long_all_capitals_words_are_headings_and_get_corrected_in_capitals(public_front_end):
    note = "PROCEURE: Colonoscopy. DIAGPOSIS: polyp. HISTRY of HIPAA FDCI forms, EXAM normal."
    assert public_front_end.correct(note) == \
        "PROCEDURE: Colonoscopy. DIAGNOSIS: polyp. HISTORY of HIPAA FDCI forms, EXAM normal."
    assert public_front_end.correct_word("QWZXQWZXQ") == "QWZXQWZXQ"  # no word within reach: kept
    assert public_front_end.correct_word("ZORBLAXQQ") == "ZORBLAX"  # two edits from a known word


def test_a_front_end_saved_before_the_heading_rule_keeps_every_all_capitals_word(tmp_path):
    # a verified model must correct text exactly as it did when it was audited
    legacy = SpellingFrontEnd({"procedure": 5, "history": 3}, acronym_max_length=None)
    legacy.save(tmp_path)
    saved = json.loads((tmp_path / "front_end" / "config.json").read_text())
    assert saved["format_version"] == 1 and "acronym_max_length" not in saved
    loaded = load_front_end(tmp_path)
    assert loaded.acronym_max_length is None
    assert loaded.correct("PROCEURE, Histry") == "PROCEURE, History"
    current = SpellingFrontEnd({"procedure": 5, "history": 3})
    current.save(tmp_path)
    assert json.loads((tmp_path / "front_end" / "config.json").read_text())["acronym_max_length"] == 5
    assert load_front_end(tmp_path).correct("PROCEURE, Histry") == "PROCEDURE, History"


def test_tokenizer_whole_words_join_the_dictionary(public_front_end, tiny_model_dir):
    assert public_front_end.correct_word("zorblaz") == "zorblax"
    assert public_front_end.words["zorblax"] == 1  # known, ranked below every public word
    from transformers import AutoTokenizer

    words = tokenizer_words(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert "mortgage" in words and "[PAD]" not in words and not any(w.startswith("##") for w in words)
    assert tokenizer_words(["[CLS]", "##ing", "Zorblax", "é", "42", "a1"]) == ["zorblax"]


def test_short_words_get_at_most_one_edit():
    front_end = SpellingFrontEnd({"card": 10, "cart": 5}, max_edit_distance=2)
    assert front_end.correct_word("cadr") == "card"  # one transposition
    assert front_end.correct_word("cxxd") == "cxxd"  # two edits away: too far for a 4-letter word
    assert SpellingFrontEnd({"statement": 3}).correct_word("xtatxmxnt") == "xtatxmxnt"  # 3 edits
    assert SpellingFrontEnd({"statement": 3}).correct_word("staemnet") == "statement"  # 2 edits


def test_ties_break_the_same_way_whatever_the_dictionary_order():
    forward = SpellingFrontEnd({"bat": 5, "cat": 5, "hat": 5})
    backward = SpellingFrontEnd({"hat": 5, "cat": 5, "bat": 5})
    assert forward.correct_word("xat") == backward.correct_word("xat") == "bat"  # alphabetical at equal count
    assert SpellingFrontEnd({"bat": 5, "cat": 9}).correct_word("xat") == "cat"  # the more frequent first


def test_extra_words_mark_the_vocabulary_private(tmp_path):
    public = SpellingFrontEnd.from_public_resources(["zorblax"], max_edit_distance=1)
    private = SpellingFrontEnd.from_public_resources(["zorblax"], max_edit_distance=1,
                                                     extra_words=["Quuxbank", "quuxbank", "not a word!"])
    assert public.correct_word("quuxbnk") == "quuxbnk" and private.correct_word("quuxbnk") == "quuxbank"
    assert private.words["quuxbank"] == 1  # the word, never its count in the private data
    public.save(tmp_path / "public")
    private.save(tmp_path / "private")
    assert json.loads((tmp_path / "public" / "front_end" / "config.json").read_text())["uses_private_vocabulary"] is False
    saved = json.loads((tmp_path / "private" / "front_end" / "config.json").read_text())
    assert saved["uses_private_vocabulary"] is True
    assert any("outside the DP guarantee" in source for source in saved["sources"])
    assert load_front_end(tmp_path / "private").uses_private_vocabulary is True


def test_save_and_load_inside_a_model_folder_rebuild_an_identical_corrector(public_front_end, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")  # the model's own files stay untouched
    folder = public_front_end.save(model_dir)
    assert folder == model_dir / "front_end"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "dictionary.txt"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "front_end"]  # no temporary leftovers
    lines = (folder / "dictionary.txt").read_text(encoding="utf-8").splitlines()
    assert lines == sorted(lines) and all(len(line.split("\t")) == 2 for line in lines)
    assert "zorblax\t1" in lines

    loaded = load_front_end(model_dir)
    assert isinstance(loaded, SpellingFrontEnd)
    assert loaded.config() == public_front_end.config()
    texts = ["Teh lendr chagred me a lat fee on my acount", "zorblaz Paymnet recieved, XXXX 12/2019",
             "Waht abuot my cerdit reprot?", "hungyr thirtsy custmer servcie"]
    assert [loaded.correct(t) for t in texts] == [public_front_end.correct(t) for t in texts]
    assert [loaded.correct(t) for t in texts] != texts

    smaller = SpellingFrontEnd({"card": 3}, max_edit_distance=1)
    smaller.save(model_dir)  # replacing an earlier front end
    assert load_front_end(model_dir).words == {"card": 3}
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "front_end"]


def test_a_model_folder_without_front_end_gives_none(tmp_path, tiny_model_dir):
    assert load_front_end(tiny_model_dir) is None
    assert SpellingFrontEnd.load(tmp_path) is None


def _saved(tmp_path: Path) -> Path:
    SpellingFrontEnd({"card": 3, "charge": 2}).save(tmp_path)
    return tmp_path / "front_end"


def test_non_utf8_dictionary_is_refused_naming_the_file(tmp_path):
    folder = _saved(tmp_path)
    (folder / "dictionary.txt").write_bytes(b"card\t3\n\xff\xfe\t2\n")
    with pytest.raises(ModelError, match=r"dictionary\.txt: not UTF-8.*save the front end again"):
        load_front_end(tmp_path)


def test_altered_dictionary_is_refused(tmp_path):
    folder = _saved(tmp_path)
    (folder / "dictionary.txt").write_text("card\t3\ncharge\t2\nfraud\t9\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"dictionary\.txt: its sha256 does not match"):
        load_front_end(tmp_path)


def test_malformed_dictionary_line_is_named(tmp_path):
    folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["dictionary_sha256"]  # a hand-made front end without a checksum still gets its lines checked
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "dictionary.txt").write_text("card\t3\ncharge two\n", encoding="utf-8")
    with pytest.raises(ModelError, match=r"dictionary\.txt:2: expected 'word<TAB>count'"):
        load_front_end(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a readable UTF-8 JSON file"),
    (b"\xff\xfe{}", "not a readable UTF-8 JSON file"),
    (b'{"kind": "pickle"}', "not a spelling front end config"),
    (b'{"kind": "symspell", "format_version": 99}', "format_version 99"),
    (b'{"kind": "symspell", "format_version": 1, "max_edit_distance": "2", "min_word_length": 3, '
     b'"uses_private_vocabulary": false}', "'max_edit_distance' is missing or not int"),
    (b'{"kind": "symspell", "format_version": 1, "max_edit_distance": 2, "min_word_length": 3, '
     b'"uses_private_vocabulary": false, "dictionary": "../../etc/passwd"}', "must be a file name"),
    (b'{"kind": "symspell", "format_version": 2, "max_edit_distance": 2, "min_word_length": 3, '
     b'"uses_private_vocabulary": false}', "'acronym_max_length' is missing"),
    (b'{"kind": "symspell", "format_version": 1, "max_edit_distance": 2, "min_word_length": 3, '
     b'"uses_private_vocabulary": false, "acronym_max_length": 5}', "format_version 1 has no"),
])
def test_bad_config_is_refused_naming_the_file(tmp_path, content, message):
    folder = _saved(tmp_path)
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ModelError, match=message) as caught:
        load_front_end(tmp_path)
    assert str(folder / "config.json") in str(caught.value)


def test_missing_dictionary_is_refused(tmp_path):
    folder = _saved(tmp_path)
    (folder / "dictionary.txt").unlink()
    with pytest.raises(ModelError, match="dictionary.txt: missing"):
        load_front_end(tmp_path)
