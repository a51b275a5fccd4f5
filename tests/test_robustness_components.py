"""Parts of the robustness audit: the fast wrapper, text windows, the embedding swap's filters, progress."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from robustness_helpers import VOCAB, network_blocked, session_resources

from audits._attack_progress import ProgressStore, run_key
from audits._attack_runner import AttackExample, example_seed
from audits.robustness import sample_examples, visible_prefix


@pytest.fixture(scope="module")
def textattack_ready(tmp_path_factory):
    from audits._textattack_offline import import_textattack

    resources = session_resources(tmp_path_factory)
    import_textattack(resources)
    return resources


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from secure_ft.text.models import load_trained_model

    return load_trained_model(tiny_model_dir)


def test_fast_wrapper_returns_the_stock_wrappers_logits(textattack_ready, tiny):
    from textattack.models.wrappers import HuggingFaceModelWrapper

    from audits._attack_model import FastClassifierWrapper

    model, tokenizer = tiny
    stock_tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    stock_tokenizer.model_max_length = 12
    texts = ["card fee", "the loan payment was late and the lender never called about my mortgage again",
             "card fee", "refund", "credit report dispute with the bureau about my score"]
    stock = HuggingFaceModelWrapper(model, stock_tokenizer)(texts)
    fast = FastClassifierWrapper(model, tokenizer, max_length=12, batch_size=2)
    ours = fast(texts)
    assert ours.shape == stock.shape
    assert torch.allclose(ours, stock, atol=1e-5)
    assert fast.model_rows == 4  # the repeated text was computed once
    again = fast(texts)
    assert torch.equal(again, ours) and fast.model_rows == 4 and fast.cache_hits == 1 + 5


def test_fast_wrapper_shares_one_entry_for_texts_the_model_sees_alike(textattack_ready, tiny):
    from audits._attack_model import FastClassifierWrapper

    model, tokenizer = tiny
    fast = FastClassifierWrapper(model, tokenizer, max_length=6)
    head = "my card fee was late again"  # fills the 6 tokens with [CLS] and [SEP]
    fast([head + " and more", head + " but other words", head.upper()])
    assert fast.model_rows == 1  # past the truncation point / lower-cased by the tokenizer: same ids


def test_visible_prefix_keeps_whole_words_that_fit(tiny):
    _, tokenizer = tiny
    text = "the card fee was late and\nthe lender never called about my mortgage payment again"
    prefix = visible_prefix(text, tokenizer, 8)
    assert text.startswith(prefix) and not prefix.endswith(" ")
    assert len(tokenizer(prefix)["input_ids"]) <= 8
    next_word_end = len(prefix) + 1 + len(text[len(prefix):].split()[0])
    assert len(tokenizer(text[:next_word_end])["input_ids"]) > 8  # one more word would not fit
    assert visible_prefix("card fee", tokenizer, 8) == "card fee"


def test_sample_is_seeded_and_bounded():
    import pandas as pd

    test = pd.DataFrame({"row": range(10, 20), "text": [f"text {i}" for i in range(10)], "label": [0, 1] * 5})
    first, again = sample_examples(test, 4, seed=3), sample_examples(test, 4, seed=3)
    assert first == again and len(first) == 4 and [e.index for e in first] == [0, 1, 2, 3]
    assert sample_examples(test, 4, seed=4) != first
    assert len(sample_examples(test, 50, seed=3)) == 10


def test_example_seed_depends_on_recipe_and_text_only():
    assert example_seed(1, "pwws", "a b") == example_seed(1, "pwws", "a b")
    assert len({example_seed(1, "pwws", "a b"), example_seed(2, "pwws", "a b"),
                example_seed(1, "deepwordbug", "a b"), example_seed(1, "pwws", "a c")}) == 4


def test_wordnet_filters_catch_antonyms_and_part_of_speech(textattack_ready):
    from audits._embedding_swap import WordNetAntonymFilter, WordNetPartOfSpeech

    antonyms, pos = WordNetAntonymFilter(), WordNetPartOfSpeech()
    assert not antonyms._allowed("good", "bad")
    assert not antonyms._allowed("good", "terrible")  # indirect: good ↔ bad, and terrible is a kind of bad
    assert not antonyms._allowed("excellent", "inferior")  # excellent is a kind of superior ↔ inferior
    assert not antonyms._allowed("increase", "decrease") and not antonyms._allowed("decrease", "increase")
    assert antonyms._allowed("excellent", "superb") and antonyms._allowed("loan", "mortgage")
    assert pos._allowed("quickly", "rapidly") and not pos._allowed("quickly", "mortgage")
    assert pos._allowed("xxxx", "mortgage")  # words WordNet lacks pass


def test_embedding_neighbours_are_cosine_ranked_and_cached(textattack_ready, tiny, tmp_path):
    from audits._embedding_swap import local_word_embedding, nearest_neighbours, whole_word_vocabulary

    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    assert nearest_neighbours(vectors, 2).tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]]

    model, tokenizer = tiny
    words, _ = whole_word_vocabulary(tokenizer)
    assert set(VOCAB) <= set(words) and not any(w.startswith("##") or len(w) < 2 for w in words)
    embedding = local_word_embedding(model, tokenizer, 3, tmp_path)
    cached = list((tmp_path / "embedding-neighbours").glob("*.npy"))
    assert len(cached) == 1
    neighbours = [embedding.index2word(i) for i in embedding.nearest_neighbours(embedding.word2index("loan"), 3)]
    assert len(neighbours) == 3 and "loan" not in neighbours
    again = local_word_embedding(model, tokenizer, 3, tmp_path)
    assert np.array_equal(again.nn_matrix, embedding.nn_matrix)


def test_progress_store_resumes_only_its_own_run(tmp_path):
    examples = [AttackExample(0, 5, "card fee", 1)]
    key = run_key("model-hash", examples, {"query_budget": 10, "workers": 2}, 16, 7)
    assert key == run_key("model-hash", examples, {"query_budget": 10, "workers": 1}, 16, 7)  # workers don't matter
    assert key != run_key("model-hash", examples, {"query_budget": 11, "workers": 2}, 16, 7)
    store = ProgressStore(tmp_path, key, resume=True)
    store.add({"recipe": "pwws", "example": 0, "result": "failed"})
    assert ProgressStore(tmp_path, key, resume=True).done("pwws", 0)
    assert not ProgressStore(tmp_path, "other", resume=True).done("pwws", 0)
    assert json.loads(store.path.read_text().splitlines()[0]) == {"key": "other"}


def test_downloads_are_refused_inside_the_audit_and_restored_after(textattack_ready):
    import huggingface_hub.constants as hub_constants
    import nltk
    import textattack.shared.utils as ta_utils

    from audits._textattack_offline import downloads_blocked
    from secure_ft.errors import AuditError

    before = (ta_utils.download_from_s3, hub_constants.HF_HUB_OFFLINE)
    with network_blocked() as attempts:
        with downloads_blocked():
            with pytest.raises(AuditError, match="allow_downloads"):
                ta_utils.download_from_s3("word_embeddings/paragramcf")
            assert hub_constants.HF_HUB_OFFLINE
            assert nltk.download("punkt") is False  # skipped, not fetched
            assert nltk.download("wordnet") is True  # ours, already here
    assert attempts == []
    assert (ta_utils.download_from_s3, hub_constants.HF_HUB_OFFLINE) == before
