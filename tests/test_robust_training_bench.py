"""bench/robust_training.py: every cell of the grid is a valid run config; the table shows the intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from bench_loading import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("robust_training")


def test_every_cell_is_a_valid_config_with_the_same_seed(bench, tmp_path):
    args = argparse.Namespace(copies=2, char_edit_fraction=1.0, threads=1, epochs=None, seed=13, max_length=64,
                              epsilon=8.0, recipes=["deepwordbug"], min_correct=100, query_budget=200, workers=1,
                              sst2=Path("/data/sst2"), sst2_train_rows=500, max_rows=None)
    configs = {(data, defence, privacy): bench.run_config(data, defence, privacy, args, tmp_path)
               for data in ("finance", "sst2") for defence in bench.DEFENCES for privacy in ("dp", "plain")}
    assert len({config.seed for config in configs.values()}) == 1
    both = configs[("sst2", "both", "dp")]
    assert both.training.robustness.augmentation_copies == 2 and both.training.robustness.front_end == "spelling"
    assert both.privacy.target_epsilon == 8.0 and both.data.max_rows == 500
    assert configs[("finance", "none", "plain")].privacy.mode == "none"
    assert configs[("finance", "front-end", "dp")].training.robustness.augmentation_copies == 0
    assert all(c.audits.robustness.min_correct_examples == 100 and c.audits.robustness.num_examples is None
               for c in configs.values())


def test_table_shows_interval_and_attacked_count(bench):
    row = {"data": "finance", "defence": "none", "privacy": "dp", "accuracy": 0.75, "macro_f1": 0.5, "epsilon": 7.99,
           "train_seconds": 12.0, "robustness_error": None,
           "recipes": {"deepwordbug": {"accuracy_under_attack": {"value": 0.3, "ci_lower": 0.22, "ci_upper": 0.4},
                                       "attacked": 100, "examples": 130}}}
    text = bench.table([row], ["deepwordbug"])
    assert "0.300 [0.220, 0.400] (100)" in text and "7.990" in text
