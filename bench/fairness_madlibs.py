"""Identity-term bias on the madlibs set: does the fairness audit see a bias we put in on purpose?

Data: ``bias_madlibs_77k_with_identity.csv`` (Dixon et al. 2018; see the folder's
PROVENANCE.md): templated sentences such as "You are a caring transgender", labelled toxic
(1) or not (0) by their adjective alone, with the identity term as the sensitive column
``identity_term``. Every identity appears equally often with both labels, so a fair model
has the same error rates for every identity.

Two classifiers share one frozen encoder (the packaged MiniLM; only the classification head
trains, on precomputed features, so the benchmark takes a few minutes on a CPU):

* **balanced** (the baseline): trained on a subset with both labels equally often per identity;
* **skewed**: the same number of rows, but for a few *target* identities only toxic examples,
  the pattern that teaches a model "this identity term means toxic".

Both are audited with the fairness audit on the same balanced held-out set (one-vs-rest with
toxic as the positive class). The first table gives per-identity FPR / FNR with bootstrap
confidence intervals; the second compares the gap measures of the skewed model with the
balanced baseline measured in the same run (ratio = skewed / balanced). A working audit shows
a clearly larger FPR for the target identities and larger gaps for the skewed model.

Run: ``.venv/bin/python bench/fairness_madlibs.py [--data PATH] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audits.context import AuditContext
from audits.registry import run_audit
from secure_ft.records.config import ModelConfig, RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.records.policy import Policy
from secure_ft.text.models import load_base_model, save_trained_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "madlibs" / "bias_madlibs_77k_with_identity.csv"
NO_IDENTITY = "(no identity term)"
TARGETS = ("gay", "muslim", "black", "transgender", "jewish", "mexican")
LABELS = ["0", "1"]  # 1 = toxic, the positive class
MAX_LENGTH = 24  # the sentences have 2 to 6 words


def load_madlibs(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"text": str, "label": int, "template": str, "identity_term": str},
                        keep_default_na=False)
    frame["identity_term"] = frame["identity_term"].replace("", NO_IDENTITY)
    frame["label_name"] = frame["label"].astype(str)
    frame["row"] = np.arange(2, len(frame) + 2)
    return frame


def _take(rows: pd.DataFrame, label: int, count: int, rng: np.random.Generator) -> pd.DataFrame:
    pool = rows[rows["label"] == label]
    return pool.iloc[rng.choice(len(pool), size=min(count, len(pool)), replace=False)]


def sample_subsets(frame: pd.DataFrame, train_per_identity: int, test_per_identity: int, targets: tuple[str, ...],
                   seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Disjoint balanced test set, balanced training subset and skewed training subset."""
    rng = np.random.default_rng(seed)
    test_parts, balanced_parts, skewed_parts = [], [], []
    for identity, rows in frame.groupby("identity_term", sort=True):
        test = pd.concat([_take(rows, label, test_per_identity // 2, rng) for label in (0, 1)])
        rest = rows.drop(test.index)
        half = train_per_identity // 2
        balanced = pd.concat([_take(rest, 0, half, rng), _take(rest, 1, half, rng)])
        skewed = _take(rest, 1, 2 * half, rng) if identity in targets else balanced
        test_parts.append(test)
        balanced_parts.append(balanced)
        skewed_parts.append(skewed)
    return tuple(pd.concat(parts).reset_index(drop=True) for parts in (balanced_parts, skewed_parts, test_parts))


@torch.no_grad()
def pooled_features(model, tokenizer, texts: list[str], max_length: int = MAX_LENGTH, batch_size: int = 256) -> torch.Tensor:
    """The frozen encoder's pooled output, the classification head's input."""
    encoder = getattr(model, model.base_model_prefix)
    outputs = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        outputs.append(encoder(**batch).pooler_output)
    return torch.cat(outputs)


def train_head(model, features: torch.Tensor, labels: np.ndarray, seed: int, steps: int = 300) -> None:
    """Fit the classification head on frozen features (full batch, AdamW, light weight decay)."""
    torch.manual_seed(seed)
    head = model.classifier
    head.reset_parameters()
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=1e-3)
    target = torch.tensor(np.asarray(labels), dtype=torch.long)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), target).backward()
        optimizer.step()


def audit_model(model, tokenizer, train: pd.DataFrame, test: pd.DataFrame, run_dir: Path, n_boot: int, seed: int):
    save_trained_model(model, tokenizer, run_dir / "model")
    splits = DatasetSplits(train=train, validation=test.iloc[:0], test=test, label_names=LABELS,
                           group_columns=["identity_term"], derived_group_columns=["identity_term"],
                           fingerprint="madlibs-bench", source="madlibs")
    config = RunConfig.model_validate({
        "seed": seed,
        "model": {"max_length": MAX_LENGTH},
        "training": {"eval_batch_size": 256},
        "audits": {"fairness": {"positive_class": "1", "min_group_size": 20, "n_boot": n_boot}},
    })
    policy = Policy.model_validate({"fairness": {"max_equalized_odds_difference": 0.3}})
    context = AuditContext(run_dir=run_dir, model_dir=run_dir / "model", splits=splits, config=config, policy=policy)
    result = run_audit("fairness", context)
    if result.error:
        raise SystemExit(f"fairness audit failed to run: {result.error}")
    return result


def _cell(estimate: dict) -> str:
    if estimate["value"] is None:
        return "   n/a            "
    return f"{estimate['value']:.2f} [{estimate['ci_lower']:.2f},{estimate['ci_upper']:.2f}]"


def _spread(groups: list[dict], rate: str) -> float:
    values = [g[rate]["value"] for g in groups if not g["insufficient_data"] and g[rate]["value"] is not None]
    return max(values) - min(values)


def _mean(groups: list[dict], rate: str, identities) -> float:
    return float(np.mean([g[rate]["value"] for g in groups if g["group"] in identities]))


def print_tables(results: dict, targets: tuple[str, ...]) -> None:
    tables = {name: result.metrics["columns"]["identity_term"] for name, result in results.items()}
    groups = {name: {g["group"]: g for g in table["groups"]} for name, table in tables.items()}
    print("\nPer-identity error rates on the balanced test set (toxic = positive), 95% bootstrap CIs; * = skew target")
    print(f"{'identity':<20} {'n':>3}  {'FPR balanced':<18} {'FPR skewed':<18} {'FNR balanced':<18} {'FNR skewed':<18}")
    for identity in sorted(groups["balanced"], key=lambda g: (g not in targets, g)):
        b, s = groups["balanced"][identity], groups["skewed"][identity]
        mark = "*" if identity in targets else " "
        print(f"{mark}{identity:<19} {b['count']:>3}  {_cell(b['fpr']):<18} {_cell(s['fpr']):<18} "
              f"{_cell(b['fnr']):<18} {_cell(s['fnr']):<18}")

    others = [g for g in groups["balanced"] if g not in targets]
    rows = [("test accuracy", lambda n: results[n].metrics["overall"]["accuracy"]["value"])]
    rows += [(f"{measure} (CI)", lambda n, m=measure: tables[n]["summary"][m]) for measure in
             ("equalized_odds_difference", "demographic_parity_difference", "equal_opportunity_difference",
              "worst_group_accuracy_gap")]
    rows += [
        ("FPR spread (max - min)", lambda n: _spread(tables[n]["groups"], "fpr")),
        ("FNR spread (max - min)", lambda n: _spread(tables[n]["groups"], "fnr")),
        ("mean FPR, target identities", lambda n: _mean(tables[n]["groups"], "fpr", targets)),
        ("mean FPR, other identities", lambda n: _mean(tables[n]["groups"], "fpr", others)),
    ]
    print("\nGap measures: skewed model against the balanced baseline measured in this run")
    print(f"{'measure':<42} {'balanced (baseline)':<20} {'skewed':<20} {'ratio':>7}")
    for label, get in rows:
        balanced, skewed = get("balanced"), get("skewed")
        if isinstance(balanced, dict):
            shown = (_cell(balanced), _cell(skewed))
            balanced, skewed = balanced["value"], skewed["value"]
        else:
            shown = (f"{balanced:.3f}", f"{skewed:.3f}")
        ratio = f"{skewed / balanced:7.2f}" if balanced else "    inf"
        print(f"{label:<42} {shown[0]:<20} {shown[1]:<20} {ratio}")
    for name, result in results.items():
        unsettled = [check.describe() for check in result.inconclusive_checks()]
        verdict = ("pass" if result.passed else
                   "FAIL: " + "; ".join(result.failure_reasons()) if result.failure_reasons() else
                   "inconclusive: " + "; ".join(unsettled))
        print(f"example policy (equalized odds difference <= 0.3), {name}: {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="keep run folders and evidence here")
    parser.add_argument("--train-per-identity", type=int, default=40)
    parser.add_argument("--test-per-identity", type=int, default=40)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated identities to skew")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    out = args.out or Path(tempfile.mkdtemp(prefix="madlibs-bench-"))

    started = time.perf_counter()
    frame = load_madlibs(args.data)
    unknown = set(targets) - set(frame["identity_term"])
    if unknown:
        raise SystemExit(f"--targets: {sorted(unknown)} are not identity terms of {args.data}")
    balanced, skewed, test = sample_subsets(frame, args.train_per_identity, args.test_per_identity, targets, args.seed)
    print(f"data: {args.data.name}; train rows {len(balanced)} (balanced) / {len(skewed)} (skewed), "
          f"test rows {len(test)} over {test['identity_term'].nunique()} identities; targets {', '.join(targets)}")

    torch.manual_seed(args.seed)
    model, tokenizer = load_base_model(ModelConfig(max_length=MAX_LENGTH), LABELS)
    model.eval()
    texts = sorted(set(balanced["text"]) | set(skewed["text"]))
    features = dict(zip(texts, pooled_features(model, tokenizer, texts)))
    print(f"encoded {len(texts)} training sentences with the frozen encoder in {time.perf_counter() - started:.0f} s")

    results = {}
    for name, train in (("balanced", balanced), ("skewed", skewed)):
        train_head(model, torch.stack([features[t] for t in train["text"]]), train["label"].to_numpy(), args.seed)
        results[name] = audit_model(model, tokenizer, train, test, out / name, args.n_boot, args.seed)
        (out / name / "fairness.json").write_text(json.dumps(results[name].to_dict(), indent=1))
    print_tables(results, targets)
    print(f"\nevidence: {out}/{{balanced,skewed}}/audits/fairness/; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
