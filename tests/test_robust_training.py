"""Issue #16 wired in: the spelling front end is part of the model; augmentation copies under DP keep ε."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dp_helpers import dp_config, without_dropout
from secure_ft.records.model_identity import model_digest as model_hash
from secure_ft.records.robust_training_config import RobustTrainingConfig
from secure_ft.text.spelling import SpellingFrontEnd
from secure_ft.text.text_classifier import TextClassifier
from secure_ft.training.central_run import train_run
from secure_ft.training.robust_training import training_set
from secure_ft.training.training_loop import encode
from tiny_models import tiny_bert_folder
from toy_data import VOCAB

TYPOS = ["the mortgaeg paymnet was late", "my credt reprot score", "refnud the charge please"]
CORRECTED = ["the mortgage payment was late", "my credit report score", "refund the charge please"]


@pytest.fixture(scope="module")
def front_end_run(tmp_path_factory, tiny_model_dir):
    """A plain run on the toy data with the spelling front end, training words opted in."""
    from secure_ft.records.config import RunConfig
    from toy_data import toy_frame

    root = tmp_path_factory.mktemp("front-end-run")
    toy_frame().to_csv(root / "data.csv", index=False)
    config = RunConfig.model_validate({
        "output_dir": str(root / "runs"),
        "data": {"source": str(root / "data.csv"), "label_column": "product", "group_columns": ["region", "senior"],
                 "min_class_count": 5},
        "model": {"name_or_path": str(tiny_model_dir), "transfer": "full", "max_length": 16},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "head_learning_rate": None,
                     "early_stopping_patience": None, "num_threads": 1,
                     "robustness": {"front_end": "spelling", "front_end_extra_words_from_training_data": True}},
        "privacy": {"mode": "none"},
    })
    return config, train_run(config, progress=False)


def test_the_front_end_is_saved_in_the_model_folder_and_counts_in_its_hash(front_end_run, tmp_path):
    _, trained = front_end_run
    saved = json.loads((trained.model_dir / "front_end" / "config.json").read_text())
    assert saved["uses_private_vocabulary"] is True
    assert trained.model_sha256 == model_hash(trained.model_dir)
    copy = tmp_path / "model"
    shutil.copytree(trained.model_dir, copy)
    with open(copy / "front_end" / "dictionary.txt", "a", encoding="utf-8") as stream:
        stream.write("zzzextra\t1\n")
    assert model_hash(copy) != trained.model_sha256  # the dictionary is part of the model's identity


def test_metrics_and_ledger_say_the_vocabulary_is_outside_the_dp_guarantee(front_end_run):
    _, trained = front_end_run
    summary = json.loads((trained.run_dir / "metrics.json").read_text())["robust_training"]
    assert summary["uses_private_vocabulary"] is True
    assert summary["front_end"]["kind"] == "symspell" and "NOT covered" in summary["front_end"]["note"]
    assert summary["front_end"]["all_capitals_kept_up_to"] == 5  # longer all-capitals words are corrected
    ledger = [json.loads(line) for line in (trained.run_dir / "ledger.jsonl").read_text().splitlines()]
    saved = next(entry for entry in ledger if entry.get("event") == "model_saved")
    assert saved["data"]["front_end"] == "spelling" and saved["data"]["uses_private_vocabulary"] is True


def test_the_loader_classifies_a_typod_text_like_its_correction(front_end_run):
    _, trained = front_end_run
    classifier = TextClassifier.load(trained.model_dir, max_length=16)
    assert classifier.model_inputs(TYPOS) == CORRECTED
    raw_ids = classifier.tokenizer(TYPOS)["input_ids"]
    assert raw_ids != classifier.tokenizer(CORRECTED)["input_ids"]  # without the front end the model reads [UNK]s
    assert classifier.predict_proba(TYPOS) == pytest.approx(classifier.predict_proba(CORRECTED), abs=1e-6)


def test_audit_scoring_uses_the_front_end(front_end_run):
    import pandas as pd

    from audits._scoring import load_model_for, score_split
    from audits.context import AuditContext
    from secure_ft.records.data import load_splits
    from secure_ft.records.policy import Policy

    config, trained = front_end_run
    context = AuditContext(run_dir=trained.run_dir, model_dir=trained.model_dir,
                           splits=load_splits(config.data, config.seed), config=config, policy=Policy())
    classifier = load_model_for(context)
    typos = score_split(classifier, pd.DataFrame({"text": TYPOS, "label": [1, 2, 0]}), context)
    corrected = score_split(classifier, pd.DataFrame({"text": CORRECTED, "label": [1, 2, 0]}), context)
    assert typos.probabilities == pytest.approx(corrected.probabilities, abs=1e-6)
    assert typos.losses == pytest.approx(corrected.losses, abs=1e-6)


def test_the_attack_wrapper_attacks_the_model_as_served(front_end_run, tmp_path_factory):
    from robustness_helpers import session_resources

    from audits._textattack_offline import import_textattack

    import_textattack(session_resources(tmp_path_factory))
    from audits._attack_model import FastClassifierWrapper

    _, trained = front_end_run
    classifier = TextClassifier.load(trained.model_dir, max_length=16)
    served = FastClassifierWrapper(classifier.model, classifier.tokenizer, 16, front_end=classifier.front_end)
    bare = FastClassifierWrapper(classifier.model, classifier.tokenizer, 16)
    assert torch.allclose(served(TYPOS), bare(CORRECTED), atol=1e-5)
    assert served.model_rows == 3  # typo'd and corrected queries share cache entries: the same model input


def test_training_reads_corrected_text():
    from transformers import AutoTokenizer

    tokenizer_dir = tiny_bert_folder_cached()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    front_end = SpellingFrontEnd({word: 5 for word in VOCAB} | {"late": 5})
    settings = RobustTrainingConfig(front_end="spelling")
    got = training_set(tokenizer, TYPOS, [1, 2, 0], [1, 2, 3], 16, settings, seed=0, front_end=front_end)
    expected = encode(tokenizer, CORRECTED, [1, 2, 0], 16)
    for ours, theirs in zip(got.tensors, expected.tensors):
        assert torch.equal(ours, theirs)


_TOKENIZER_DIR = {}


def tiny_bert_folder_cached():
    import tempfile
    from pathlib import Path

    if "dir" not in _TOKENIZER_DIR:
        _TOKENIZER_DIR["dir"] = tiny_bert_folder(Path(tempfile.mkdtemp(prefix="tiny-tok-")), VOCAB, num_labels=3)
    return _TOKENIZER_DIR["dir"]


# -- augmentation multiplicity ---------------------------------------------------------------------

def test_copies_are_stacked_per_example_and_seeded_by_the_example():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_folder_cached())
    settings = RobustTrainingConfig(augmentation_copies=2, char_edit_fraction=1.0, synonym_fraction=0.0)
    texts = ["the loan payment was late", "my card fee and refund"]
    stacked = training_set(tokenizer, texts, [1, 0], [10, 11], 16, settings, seed=3)
    assert stacked.tensors[0].shape == (2, 3, 16) and stacked.tensors[-1].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert torch.equal(stacked.tensors[0][:, 0], encode(tokenizer, texts, [1, 0], 16).tensors[0])
    assert not torch.equal(stacked.tensors[0][:, 1], stacked.tensors[0][:, 0])  # copies are perturbed
    alone = training_set(tokenizer, texts[1:], [0], [11], 16, settings, seed=3)
    assert torch.equal(alone.tensors[0][0], stacked.tensors[0][1])  # a copy depends on its example alone


def _privacy(run_dir):
    return json.loads((run_dir / "privacy.json").read_text())


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_dp_with_copies_keeps_the_accountant_inputs_and_clips_one_row_per_example(tmp_path, mode, monkeypatch):
    from toy_data import toy_frame

    data = tmp_path / "data.csv"
    toy_frame().to_csv(data, index=False)
    model_dir = without_dropout(tiny_bert_folder(tmp_path / "tiny", VOCAB, num_labels=3))
    plain = dp_config(data, model_dir, tmp_path / "plain", epochs=1, grad_sample_mode=mode)
    copies = dp_config(data, model_dir, tmp_path / "copies", epochs=1, grad_sample_mode=mode)
    copies.training.robustness = RobustTrainingConfig(augmentation_copies=2, char_edit_fraction=1.0,
                                                      synonym_fraction=0.0)
    rows_seen = []
    if mode == "bookkeeping":
        from secure_ft.training.multiplicity import GroupedBookKeepingModule

        original = GroupedBookKeepingModule.clip_and_write_grads

        def recording(self, batch_size):
            rows = {record.inputs.shape[0] for record in self._records.values()}
            coefficients = original(self, batch_size)
            clipped = self.per_sample_norms * coefficients
            rows_seen.append((rows, batch_size, len(self.per_sample_norms), float(clipped.max())))
            return coefficients

        monkeypatch.setattr(GroupedBookKeepingModule, "clip_and_write_grads", recording)
    else:
        from opacus.optimizers import DPOptimizer

        original = DPOptimizer.clip_and_accumulate

        def recording(self):
            samples = [s for s in self.grad_samples if s is not None]
            norms = torch.stack([s.reshape(len(s), -1).norm(dim=1) for s in samples], dim=1).norm(dim=1)
            clipped = norms * (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            rows_seen.append(({len(s) for s in samples}, None, len(norms), float(clipped.max()) if len(norms) else 0.0))
            return original(self)

        monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", recording)

    reference = _privacy(train_run(plain, progress=False).run_dir)
    monkeypatch_calls_before = len(rows_seen)
    augmented = _privacy(train_run(copies, progress=False).run_dir)
    for key in ("noise_multiplier", "sample_rate", "steps", "epsilon", "delta", "max_grad_norm", "dataset_size"):
        assert augmented[key] == reference[key], key
    assert augmented["rows_per_example"] == 3 and reference["rows_per_example"] == 1
    assert augmented["grad_sample_mode"] == mode
    calls = rows_seen[monkeypatch_calls_before:] if mode == "hooks" else rows_seen
    assert calls, "the grouped clipping never ran"
    for rows, batch_size, per_example, largest in calls:
        if mode == "bookkeeping":
            assert rows == {3 * batch_size} and per_example == batch_size  # B·G rows in, B examples clipped
        else:
            assert rows == {per_example}  # after grouping, one gradient row per example reaches clipping
        assert largest <= 1.0 + 1e-4  # each example's clipped row has norm ≤ C


def test_plain_training_averages_each_examples_copies():
    from torch import nn

    from secure_ft.training.multiplicity import collate_copies, copies_per_example, stack_copies
    from torch.utils.data import TensorDataset

    x = torch.randn(4, 3)
    copy = TensorDataset(x + 1, torch.tensor([0, 1, 0, 1]))
    data = stack_copies(TensorDataset(x, torch.tensor([0, 1, 0, 1])), [copy])
    assert copies_per_example(data) == 2
    rows_x, rows_y = collate_copies([data[i] for i in range(4)])
    with torch.no_grad():
        logits = nn.Linear(3, 2)(rows_x)
    assert rows_y.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # each example's rows next to each other
    per_row = nn.functional.cross_entropy(logits, rows_y, reduction="none")
    # the loop's mean over rows is the mean over examples of each example's mean over its copies
    assert float(nn.functional.cross_entropy(logits, rows_y)) == pytest.approx(float(per_row.view(4, 2).mean(1).mean()))
