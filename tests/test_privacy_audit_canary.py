"""Secret-sharer canaries: exposure is high without DP, near chance with DP, and only hashes leave."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pandas as pd
import pytest

from audits._canary import PREFIX, make_canaries
from audits.context import AuditContext
from audits.privacy import privacy_audit
from secure_ft.errors import AuditError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.text.models import save_trained_model, load_base_model
from tiny_models import tiny_bert_folder
from secure_ft.records.policy import Policy

WORDS = [f"w{index}" for index in range(30)]
LABELS = ["a", "b", "c", "d"]


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    labels = [rng.randrange(len(LABELS)) for _ in range(rows)]
    return pd.DataFrame({"row": range(rows), "text": [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(rows)],
                         "label": labels, "label_name": [LABELS[i] for i in labels]})


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("canary-base"), WORDS, num_labels=len(LABELS), seed=0)


def canary_context(tmp_path, base_dir, *, max_length: int = 32, steps: int = 600, dp: bool = False) -> AuditContext:
    config = RunConfig.model_validate({
        "model": {"name_or_path": str(base_dir), "transfer": "full", "max_length": max_length},
        "training": {"batch_size": 16, "learning_rate": 3e-3},
        "audits": {"privacy": {"membership_examples": 40, "n_boot": 20, "calibrated_attack": False, "canaries": 10,
                               "canary_repeats": 20, "canary_candidates": 1000, "canary_steps": steps}},
        "privacy": {"mode": "none"},
    })
    splits = DatasetSplits(train=frame(80, 1), validation=frame(10, 2), test=frame(40, 3), label_names=LABELS,
                           group_columns=[], derived_group_columns=[], fingerprint="c" * 64, source="synthetic")  # the canary run is recorded under it
    run_dir = tmp_path / "run"
    model, tokenizer = load_base_model(config.model, LABELS)
    save_trained_model(model, tokenizer, run_dir / "model")
    if dp:
        (run_dir / "privacy.json").write_text(json.dumps({"epsilon": 2.0, "delta": 1e-5, "noise_multiplier": 1.5,
                                                          "max_grad_norm": 1.0}))
    policy = Policy.model_validate({"privacy": {"require_dp": False, "max_canary_exposure": 3.0}})
    return AuditContext(run_dir=run_dir, model_dir=run_dir / "model", splits=splits, config=config, policy=policy)


def test_canaries_are_unique_and_of_the_documented_format():
    canaries = make_canaries(50, 4, np.random.default_rng(0))
    assert len({c.text for c in canaries}) == 50
    assert all(c.text.startswith(PREFIX) and len(c.text.split()) == len(PREFIX.split()) + 6 for c in canaries)
    assert {c.label for c in canaries} <= set(range(4))


def test_memorised_canaries_are_exposed_and_only_hashes_are_reported(tmp_path, base_dir):
    context = canary_context(tmp_path, base_dir)
    result = privacy_audit(context)
    canary = result.metrics["canary"]

    assert canary["dp"] is False and canary["count"] == 10
    assert canary["mean_exposure"] > 3.5  # chance is ~1.44 bits, the maximum log2(1001) ~ 9.97
    assert canary["max_exposure"] <= canary["max_possible_exposure"] + 1e-9
    failed = {check.name for check in result.checks if not check.passed}
    assert "canary_max_exposure" in failed
    # the report gets hashes, never the secrets themselves
    secrets = make_canaries(10, len(LABELS), np.random.default_rng(context.config.seed + 7919))
    assert [c["sha256"] for c in canary["canaries"]] == [hashlib.sha256(s.text.encode()).hexdigest() for s in secrets]
    written = json.dumps(result.to_dict()) + "".join(
        path.read_text() for path in (context.run_dir / "audits").rglob("*") if path.is_file())
    assert not any(secret.text.split(PREFIX)[1].strip() in written for secret in secrets)


def test_dp_throwaway_run_keeps_exposure_near_chance(tmp_path, base_dir):
    result = privacy_audit(canary_context(tmp_path, base_dir, steps=300, dp=True))
    canary = result.metrics["canary"]
    assert canary["dp"] is True and canary["noise_multiplier"] == 1.5
    assert canary["mean_exposure"] < 2.5


def test_canary_longer_than_max_length_is_a_clear_error(tmp_path, base_dir):
    context = canary_context(tmp_path, base_dir, max_length=12)
    with pytest.raises(AuditError, match="model.max_length"):
        privacy_audit(context)
