"""DP on small data: probe vs LoRA vs full fine-tuning by training-set size and ε (issue #15).

    PYTHONPATH=. .venv/bin/python bench/small_data_dp.py [--datasets sst2,finance]
        [--sizes 250,500,1000,2000,5000,20000] [--transfers probe,lora,full] [--epsilons 1,3,8,none]
        [--work-dir runs/bench-small-data] [--max-length N]

Data: GLUE SST-2 from ../shared/data/sst2 (see its PROVENANCE.md): N training rows are the
first N of a permutation of the official train split seeded with 0; the official dev split
(872 sentences) is the test set and is used for nothing else. `finance` is the built-in demo
(builtin:cfpb, 1,070 training rows, 9 products) with its own seeded split; its test split is
the test set. `--sizes` applies to SST-2 only.

Every cell trains the default encoder (all-MiniLM-L6-v2) through the product's code paths:
`secure_ft.training.transfer_choice.resolve_run_config` with the transfer forced (so the probe uses its
fixed recipe `secure_ft.training.probe_recipe`, and LoRA / full the configured training defaults),
`secure_ft.training.probe.trainee_and_datasets`, `secure_ft.training.training_loop.fit` and, with an ε,
`secure_ft.privacy.engine.PrivateEngine` (PRV, δ = 1/(10 N), C = 1, σ calibrated to ε). The
model kept is the best-validation epoch (fit's own rule; validation is 15 % of the N rows for
SST-2 — never the test set). Nothing is tuned per cell. Printed per cell: test accuracy,
macro-F1, training seconds (encoding excluded; the probe's embeddings are cached per dataset
in the work directory, keyed by text, so every size and ε after the first reuses them), then
for each ε the smallest N at which LoRA beats the probe in test macro-F1 — the crossover
`model.transfer: auto` approximates with 7,500 rows (`secure_ft.training.transfer_choice`).

Cost on 2 busy cores: encoding ≈ 20–60 texts/s at length 64–128, so the first probe cell of
each dataset pays for its texts once; a probe cell then trains in ~1 minute (60 epochs, ε
recorded every epoch). LoRA / full cells are slow (minutes to hours): select them with
`--transfers` and `--sizes`. Measured figures are kept in the README ("Differential privacy").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
LABELS_SST2 = ["negative", "positive"]


def load_sst2(data_dir: Path, train_rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) frames with ``text`` / ``label`` columns: N rows split 85/15, dev as test."""
    read = dict(sep="\t", quoting=3, keep_default_na=False, dtype={"sentence": str, "label": int})
    train = pd.read_csv(data_dir / "glue_sst2_train.tsv", **read).rename(columns={"sentence": "text"})
    dev = pd.read_csv(data_dir / "glue_sst2_dev.tsv", **read).rename(columns={"sentence": "text"})
    rows = train.sample(frac=1.0, random_state=seed).head(train_rows).reset_index(drop=True)
    cut = int(round(len(rows) * 0.85))
    return rows.iloc[:cut].reset_index(drop=True), rows.iloc[cut:].reset_index(drop=True), dev


def load_finance(seed: int):
    from secure_ft.records.config import RunConfig
    from secure_ft.records.data import load_splits

    splits = load_splits(RunConfig().data, seed)
    return splits.train, splits.validation, splits.test, splits.label_names, splits.fingerprint


def run_cell(frames, labels: list[str], *, transfer: str, epsilon: float | None, cache_dir: Path, args,
             fingerprint: str | None = None) -> dict:
    import torch

    from secure_ft.records.config import RunConfig
    from secure_ft.records.data import rows_fingerprint
    from secure_ft.text.models import apply_transfer, load_base_model
    from secure_ft.training.central_run import spend_recorded
    from secure_ft.training.probe import trainee_and_datasets
    from secure_ft.training.training_loop import TrainingEngine, evaluate, fit, seed_everything
    from secure_ft.training.transfer_choice import resolve_run_config

    train, validation, test = frames
    raw = {"model": {"transfer": transfer, **({"max_length": args.max_length} if args.max_length else {})},
           "privacy": {"mode": "dp", "target_epsilon": epsilon} if epsilon is not None else {"mode": "none"},
           "training": {"num_threads": args.threads}}
    config, choice = resolve_run_config(RunConfig.model_validate(raw), len(train))
    seed_everything(args.seed)
    model, tokenizer = load_base_model(config.model, labels)
    model = apply_transfer(model, config.model)
    trainee, (train_set, validation_set, test_set) = trainee_and_datasets(
        model, tokenizer, config.model, [train, validation, test], cache_dir=cache_dir,
        batch_size=config.training.eval_batch_size, progress=not args.quiet)
    if epsilon is None:
        engine = TrainingEngine(config.training.max_grad_norm, config.training.max_physical_batch_size)
    else:
        from secure_ft.privacy.engine import PrivateEngine

        engine = PrivateEngine(config.privacy, dataset_size=len(train_set), transfer=transfer,
                               epochs=config.training.epochs, batch_size=config.training.batch_size)
    started = time.perf_counter()
    # a measurement on the data spends its budget like any run: recorded in its privacy budget ledger
    with spend_recorded(config, engine, fingerprint=fingerprint or rows_fingerprint(train, labels),
                        dataset_size=len(train), run=f"bench/small_data_dp {transfer} ε={epsilon} N={len(train)}",
                        kind="bench"):
        result = fit(trainee, train_set, validation_set, labels, config.training, seed=args.seed, engine=engine,
                     progress=False)
    seconds = time.perf_counter() - started
    scores = evaluate(result.model, test_set, labels, config.training.eval_batch_size, "cpu")
    predicted_classes = sum(1 for recall in scores["per_class_recall"].values() if recall > 0)
    row = {"transfer": transfer, "epsilon_target": epsilon, "train_rows": len(train), "accuracy": scores["accuracy"],
           "macro_f1": scores["macro_f1"], "classes_recalled": f"{predicted_classes}/{len(labels)}",
           "seconds": seconds, "steps": result.steps, "best_epoch": result.best_epoch,
           "hyperparameters": choice.hyperparameters, "epsilon": None}
    if epsilon is not None:
        row["epsilon"] = engine.guarantee(result)["epsilon"]
    del model, trainee
    torch.set_num_threads(args.threads)
    return row


def crossover(rows: list[dict]) -> list[str]:
    """Per ε: the smallest N at which LoRA's test macro-F1 beats the probe's."""
    lines = []
    for epsilon in sorted({row["epsilon_target"] for row in rows}, key=lambda e: (e is None, e or 0)):
        by_size: dict[int, dict[str, float]] = {}
        for row in rows:
            if row["epsilon_target"] == epsilon and row["dataset"] == "sst2":
                by_size.setdefault(row["train_rows"], {})[row["transfer"]] = row["macro_f1"]
        compared = sorted(size for size, scores in by_size.items() if {"probe", "lora"} <= set(scores))
        label = "non-private" if epsilon is None else f"ε = {epsilon:g}"
        if not compared:
            lines.append(f"{label}: not measured (needs probe and lora at the same sizes)")
            continue
        wins = [size for size in compared if by_size[size]["lora"] > by_size[size]["probe"]]
        lines.append(f"{label}: " + (f"LoRA first beats the probe at N = {wins[0]:,} (of {compared})" if wins
                                     else f"the probe wins at every measured N ({compared})"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", default="sst2,finance", help="comma-separated: sst2, finance")
    parser.add_argument("--sizes", default="250,500,1000,2000,5000,20000", help="SST-2 training rows (N)")
    parser.add_argument("--transfers", default="probe,lora,full")
    parser.add_argument("--epsilons", default="1,3,8,none", help="comma-separated ε; none = non-private")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-small-data"),
                        help="holds the per-dataset embedding caches (as private as the data)")
    parser.add_argument("--max-length", type=int, default=None, help="model.max_length (default: the product's)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    from secure_ft.records.offline_environment import quiet_third_party
    from secure_ft.training.transfer_choice import PROBE_MAX_ROWS_DP

    quiet_third_party()
    epsilons = [None if value.strip() == "none" else float(value) for value in args.epsilons.split(",")]
    transfers = [value.strip() for value in args.transfers.split(",")]
    sizes = [int(value) for value in args.sizes.split(",")]
    rows: list[dict] = []
    header = f"{'dataset':8} {'N':>6} {'transfer':8} {'ε':>5} {'ε reached':>9} {'test acc':>8} {'macro-F1':>8} {'classes':>7} {'train s':>8}"
    print(header, flush=True)
    for dataset in [value.strip() for value in args.datasets.split(",")]:
        if dataset == "sst2":
            cells = [(size, load_sst2(args.data, size, 0), LABELS_SST2) for size in sizes]
        elif dataset == "finance":
            train, validation, test, labels, finance_fingerprint = load_finance(args.seed)
            cells = [(len(train), (train, validation, test), labels)]
        else:
            parser.error(f"--datasets: unknown {dataset!r}; use sst2 and/or finance")
        for size, frames, labels in cells:
            for transfer in transfers:
                for epsilon in epsilons:
                    row = run_cell(frames, labels, transfer=transfer, epsilon=epsilon,
                                   cache_dir=args.work_dir / dataset / "cache", args=args,
                                   fingerprint=finance_fingerprint if dataset == "finance" else None)
                    row["dataset"] = dataset
                    rows.append(row)
                    reached = "-" if row["epsilon"] is None else f"{row['epsilon']:.3f}"
                    print(f"{dataset:8} {row['train_rows']:>6} {transfer:8} {'-' if epsilon is None else f'{epsilon:g}':>5} "
                          f"{reached:>9} {row['accuracy']:>8.3f} {row['macro_f1']:>8.3f} {row['classes_recalled']:>7} "
                          f"{row['seconds']:>8.1f}", flush=True)
    print(f"\ncrossover (SST-2, test macro-F1); model.transfer: auto switches DP runs (ε ≤ 8) from probe to "
          f"lora at N = {PROBE_MAX_ROWS_DP:,}:")
    for line in crossover(rows):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
