"""Privacy–utility trade-off on SST-2: dev accuracy without DP and at ε ∈ {1, 3, 8}, same steps.

    .venv/bin/python bench/privacy_utility.py [--train-rows 67349] [--epochs 1] [--batch 1024]
        [--transfer lora] [--lr 1e-2] [--head-lr 5e-2] [--plain-lr 2e-3,5e-3,1e-2] [--epsilons 1,3,8] [--pooling mean] [--sweep-lr 5e-3,1e-2]

Data: GLUE SST-2 from ../shared/data/sst2 (see its PROVENANCE.md). Training uses the official
train split (67,349 rows) or, with `--train-rows`, a documented subsample of it: the first rows
of a permutation seeded with 0; evaluation uses the whole official dev split (872 sentences).
Every configuration trains the default model (all-MiniLM-L6-v2) with the same transfer mode,
epochs and logical batch, hence the same number of optimizer steps; DP runs calibrate σ to
reach their ε after those epochs (δ = 1/(10 N), PRV accountant, Poisson sampling). The score is
the dev accuracy after the last epoch (no selection on dev). Printed: accuracy, gap to
non-private in points, ε reached, σ, steps, time.

Cost on this 2-core CPU at the defaults: about 13–14 minutes per non-private run and 15 per DP
run (both compute 32-row pieces of each 1024-row batch), so about 85 minutes for the whole
table (three non-private learning rates, three ε); `--train-rows 20000 --batch 320` gives a
much shorter look.

Result at the defaults (whole split, 1 epoch, batch 1024, 66 steps, LoRA r = 8, DP lr 1e-2,
head lr 5e-2, clipping norm 1.0, `model.pooling: mean`: the default model reads the mean of
its token states, as sentence-transformers trained it — see `secure_ft/text/pooling.py`; the
product's default stays cls, which the 1,070-row demo passes its audits with):

    run                     ε reached  σ      dev accuracy  gap (pts)
    non-private lr 2e-3     -          -      0.837
    non-private lr 5e-3     -          -      0.859         (baseline: the best)
    non-private lr 1e-2     -          -      0.854
    DP ε = 8                7.996      0.515  0.831         2.75
    DP ε = 3                2.999      0.737  0.828         3.10
    DP ε = 1                0.990      1.069  0.825         3.44

The issue's target, gap ≤ 3 points at ε = 8, holds: 2.75 points. Accuracy barely moves between
ε = 8 and ε = 1 (0.831 → 0.825) because with 67,349 rows the noise in each averaged gradient is
already small (σ·C / 1024): the remaining gap comes less from the noise than from what DP-SGD
changes besides it (per-sample clipping, the learning rate it tolerates), not separated here.

What got there (ε = 8 unless said). Mean pooling made the difference: the same settings with the
classifier on tanh([CLS]) (the identity pooler earlier versions used) scored 0.814 against a
0.856 baseline, a 4.13-point gap, and a frozen linear probe on 8,000 training rows reads 0.808
from the mean but 0.742 from tanh([CLS]) — DP-SGD's few noisy steps cannot build what the base
model already offers through the mean. Before that, the sweeps with the [CLS] head showed: more
training rows lift DP accuracy most (0.726 at 2,500 rows to 0.814 at all 67,349: for a fixed ε
and step count the noise in each averaged gradient shrinks like 1/N) while the non-private
baseline rises too; once the noise is small, the DP learning rate matters (5e-3 and 2e-2 both
lost two points against 1e-2 on the whole split); head learning rate 1e-2 instead of 5e-2 gave
the same accuracy; clipping norm 0.1 instead of 1.0 lost one point.

    [CLS] head: rows  epochs  batch  steps  DP lr  DP ε=8   non-private (best lr)   gap (pts)
    2,500             3       128    60     5e-3   0.726    0.792                   6.65
    10,000            1       160    63     5e-3   0.752    0.801                   4.82
    20,000            1       320    63     1e-2   0.772    0.810                   3.78
    67,349            1       1024   66     1e-2   0.814    0.856                   4.13
    67,349            1       1024   66     5e-3   0.794    0.856                   6.19
    67,349            1       1024   66     2e-2   0.792    0.856                   6.31
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def load_sst2(data_dir: Path, train_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    read = dict(sep="\t", quoting=3, keep_default_na=False, dtype={"sentence": str, "label": int})
    train = pd.read_csv(data_dir / "glue_sst2_train.tsv", **read)
    dev = pd.read_csv(data_dir / "glue_sst2_dev.tsv", **read)
    train = train.sample(frac=1.0, random_state=0).head(train_rows).reset_index(drop=True)
    return train, dev


def run_one(train: pd.DataFrame, dev: pd.DataFrame, *, epsilon: float | None, lr: float, args) -> dict:
    import torch

    from secure_ft.records.config import ModelConfig, PrivacyConfig, RunConfig, TrainingConfig
    from secure_ft.records.data import rows_fingerprint
    from secure_ft.text.models import apply_transfer, load_base_model
    from secure_ft.training.central_run import spend_recorded
    from secure_ft.training.training_loop import TrainingEngine, encode, fit

    labels = ["negative", "positive"]
    model_config = ModelConfig(transfer=args.transfer, max_length=args.max_length, pooling=args.pooling)
    torch.manual_seed(0)
    model, tokenizer = load_base_model(model_config, labels)
    model = apply_transfer(model, model_config)
    train_set = encode(tokenizer, train["sentence"].tolist(), train["label"].tolist(), args.max_length)
    dev_set = encode(tokenizer, dev["sentence"].tolist(), dev["label"].tolist(), args.max_length)
    training = TrainingConfig(epochs=args.epochs, batch_size=args.batch, learning_rate=lr, head_learning_rate=args.head_lr,
                              early_stopping_patience=None, num_threads=args.threads, eval_batch_size=128)
    if epsilon is None:
        engine = TrainingEngine(training.max_grad_norm, args.physical_batch)  # same step, pieces of 32 rows
    else:
        from secure_ft.privacy.engine import PrivateEngine

        settings = PrivacyConfig(target_epsilon=epsilon, max_grad_norm=args.clip,
                                 max_physical_batch_size=args.physical_batch)
        engine = PrivateEngine(settings, dataset_size=len(train_set), transfer=args.transfer)
    started = time.perf_counter()
    # a measurement (and a learning-rate sweep) on the data spends its budget: recorded in its ledger
    with spend_recorded(RunConfig(), engine, fingerprint=rows_fingerprint(train, labels, text_column="sentence"),
                        dataset_size=len(train), run=f"bench/privacy_utility ε={epsilon} lr={lr:g}", kind="bench"):
        result = fit(model, train_set, dev_set, labels, training, seed=0, engine=engine, progress=False)
    seconds = time.perf_counter() - started
    last = result.history[-1]
    row = {"epsilon_target": epsilon, "lr": lr, "accuracy": last.val_accuracy,
           "best_epoch_accuracy": max(r.val_accuracy for r in result.history), "steps": result.steps,
           "seconds": seconds, "epsilon": None, "sigma": None}
    if epsilon is not None:
        guarantee = engine.guarantee(result)
        row.update(epsilon=guarantee["epsilon"], sigma=guarantee["noise_multiplier"])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-rows", type=int, default=67349, help="rows of the official train split (67,349 = all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1024, help="logical batch (expected size under Poisson sampling)")
    parser.add_argument("--physical-batch", type=int, default=32, help="rows computed at once (every run)")
    parser.add_argument("--transfer", choices=["lora", "full", "top_k"], default="lora")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate of the DP runs (adapters)")
    parser.add_argument("--head-lr", type=float, default=5e-2, help="learning rate of the classification head (every run)")
    parser.add_argument("--plain-lr", default="2e-3,5e-3,1e-2",
                        help="comma-separated learning rates of the non-private runs; the best is the baseline")
    parser.add_argument("--clip", type=float, default=1.0, help="per-sample clipping norm of the DP runs")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--sweep-lr", help="instead: comma-separated DP learning rates to try at the largest ε")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--pooling", choices=["auto", "mean", "cls"], default="mean",
                        help="what the classifier reads (model.pooling); mean is what all-MiniLM-L6-v2 was trained for")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()

    train, dev = load_sst2(args.data, args.train_rows)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    # the baseline is the best non-private learning rate tried, so the gap is never flattered
    plan = [(None, float(lr)) for lr in args.plain_lr.split(",")]
    if args.sweep_lr:
        plan += [(max(epsilons), float(lr)) for lr in args.sweep_lr.split(",")]
    else:
        plan += [(epsilon, args.lr) for epsilon in epsilons]
    rows = []
    for epsilon, lr in plan:
        row = run_one(train, dev, epsilon=epsilon, lr=lr, args=args)
        rows.append(row)
        print(f"  {'non-private' if epsilon is None else f'ε={epsilon:g}'} lr={lr:g}: dev accuracy "
              f"{row['accuracy']:.4f} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    base = max(row["accuracy"] for row in rows if row["epsilon_target"] is None)
    print(f"\nSST-2 dev accuracy (872 sentences), {args.transfer}, {len(train)} training rows, {args.epochs} epochs, "
          f"logical batch {args.batch}, max_length {args.max_length}, {rows[0]['steps']} steps each; "
          f"gap = points below the best non-private run")
    print(f"{'config':14s} {'lr':>8s} {'ε reached':>10s} {'σ':>7s} {'steps':>6s} {'accuracy':>9s} {'gap (pts)':>10s} "
          f"{'time':>7s}")
    for row in rows:
        name = "non-private" if row["epsilon_target"] is None else f"DP ε={row['epsilon_target']:g}"
        reached = "-" if row["epsilon"] is None else f"{row['epsilon']:.3f}"
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:.3f}"
        print(f"{name:14s} {row['lr']:>8.0e} {reached:>10s} {sigma:>7s} {row['steps']:>6d} {row['accuracy']:>9.4f} "
              f"{100 * (base - row['accuracy']):>10.2f} {row['seconds']:>6.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
