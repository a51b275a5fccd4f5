"""The madlibs benchmark's subsets: disjoint, balanced where they should be, skewed where asked."""

from __future__ import annotations

import pandas as pd
from bench_loading import load_bench

_madlibs = load_bench("fairness_madlibs")
NO_IDENTITY, sample_subsets = _madlibs.NO_IDENTITY, _madlibs.sample_subsets


def toy_madlibs() -> pd.DataFrame:
    rows = []
    for identity in ("gay", "straight", NO_IDENTITY):
        for index in range(40):
            label = index % 2
            rows.append({"text": f"{identity} sentence {index}", "label": label, "label_name": str(label),
                         "identity_term": identity, "template": "t", "row": len(rows) + 2})
    return pd.DataFrame(rows)


def test_subsets_are_disjoint_balanced_and_skewed_only_for_targets():
    balanced, skewed, test = sample_subsets(toy_madlibs(), train_per_identity=10, test_per_identity=8,
                                            targets=("gay",), seed=0)
    assert not set(test["text"]) & (set(balanced["text"]) | set(skewed["text"]))
    assert len(balanced) == len(skewed) == 30 and len(test) == 24
    per_group = test.groupby("identity_term")["label"].agg(["count", "mean"])
    assert (per_group["count"] == 8).all() and (per_group["mean"] == 0.5).all()
    assert (balanced.groupby("identity_term")["label"].mean() == 0.5).all()
    skew = skewed.groupby("identity_term")["label"].mean()
    assert skew["gay"] == 1.0 and skew["straight"] == 0.5 and skew[NO_IDENTITY] == 0.5
