"""The bundle README tells the truth: its code block, run as written, gives what `secure-ft serve` serves."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fake_run import WORDS, make_run
from secure_ft.records.config import RunConfig
from secure_ft.release.bundle_usage import CODE_BLOCK_INFO, EXAMPLE_TEXT
from secure_ft.release.export import SIGNATURE_FILE, export_bundle
from secure_ft.serving.bundle_loader import load_verified_bundle
from secure_ft.serving.classifier import BundleClassifier
from secure_ft.text.models import load_trained_model, save_trained_model
from secure_ft.text.pooling import use_mean_pooling
from secure_ft.text.spelling import SpellingFrontEnd
from tiny_models import tiny_bert_folder

TYPOS = ["lon chrge on my cerdit card", "morgage paymnet refnd", "lat fea and fruad", "bank account report"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle whose model reads mean_normalized pooling, 24 tokens and a typo-correcting front end."""
    root = tmp_path_factory.mktemp("readme")
    model, tokenizer = load_trained_model(tiny_bert_folder(root / "base", WORDS, num_labels=3, seed=11))
    assert use_mean_pooling(model, "mean_normalized")
    save_trained_model(model, tokenizer, root / "classifier")
    config = RunConfig.model_validate({"model": {"max_length": 24}})
    run = make_run(root, config=config, model_dir=root / "classifier",
                   front_end=SpellingFrontEnd({word: 10 for word in WORDS}))
    return export_bundle(run.run_dir, root / "bundle")


def readme_code(bundle) -> str:
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"```{CODE_BLOCK_INFO}\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 1, "the README has exactly one Python code block"
    return blocks[0]


def run_readme(bundle, monkeypatch, code: str) -> dict:
    monkeypatch.chdir(bundle)  # "in this bundle's folder"
    namespace: dict = {}
    exec(compile(code, str(bundle / "README.md"), "exec"), namespace)
    return namespace


def served(bundle, texts):
    classifier = BundleClassifier.from_bundle(load_verified_bundle(bundle), "cpu")
    probabilities = classifier.probabilities(texts)
    return classifier, probabilities


def test_the_readme_states_the_bundles_own_format_and_preprocessing(bundle):
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    assert f"`{SIGNATURE_FILE}` is an OpenSSF model-signing" in readme and "P-256" in readme
    assert "manifest" not in readme and "Ed25519" not in readme  # the format that no longer exists
    assert '"pooling": "mean_normalized"' in readme
    assert "front_end" in readme and "max_length=24" in readme
    assert "`credit_card`, `mortgage`, `debt_collection`" in readme


def test_the_readme_code_block_as_written_gives_the_served_predictions(bundle, monkeypatch):
    namespace = run_readme(bundle, monkeypatch, readme_code(bundle))
    classifier, expected = served(bundle, [EXAMPLE_TEXT])
    np.testing.assert_allclose(namespace["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    assert namespace["labels"] == classifier.label_names(expected)


def test_the_readme_code_block_on_misspelt_texts_matches_serve(bundle, monkeypatch):
    code = readme_code(bundle)
    line = f"texts = [{EXAMPLE_TEXT!r}]"
    assert line in code  # the one line a user edits
    namespace = run_readme(bundle, monkeypatch, code.replace(line, f"texts = {TYPOS!r}"))
    classifier, expected = served(bundle, TYPOS)
    np.testing.assert_allclose(namespace["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    # skipping the front end (what the old README showed) reads other text and gives other numbers
    bare = run_readme(bundle, monkeypatch, code.replace(line, f"texts = {TYPOS!r}").replace(
        "front_end(texts)", "texts"))
    assert not np.allclose(bare["probabilities"].numpy(), expected, atol=1e-4)
