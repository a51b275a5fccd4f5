"""Robustness-focused training (issue #16): one table of defences × privacy × data, same seeds.

Each cell trains one central run through the product path (`secure_ft.training.central_run.train_run`,
so the front end and the augmentation copies are wired exactly as for users), then runs the
performance audit and the robustness audit (the model attacked as served) on the test split:

* defences: ``none``; ``augmentation`` (``training.robustness.augmentation_copies`` K perturbed
  copies per example, averaged before clipping under DP); ``front-end`` (the spelling front
  end from public resources); ``both``;
* privacy: ``dp`` (ε = ``--epsilon``, default 8) and ``plain`` (non-private);
* data: ``finance`` (the default builtin:cfpb data and its seeded test split) and ``sst2``
  (GLUE SST-2: a seeded subset of the official train split, evaluated and attacked on the
  official dev split).

Columns: clean accuracy and macro-F1 (test), accuracy under attack per recipe with its Wilson
95% interval and the number of texts attacked (at least ``--min-correct`` correctly
classified ones, all there are when fewer), ε, training seconds. Every cell uses the same seed,
so the copies, the Poisson batches and the attacked texts differ only by what the cell varies.

    python bench/robust_training.py [--data finance,sst2] [--defences none,augmentation,front-end,both]
        [--privacy dp,plain] [--epsilon 8] [--copies 4] [--recipes deepwordbug,pwws,embedding-swap] [--min-correct 100]
        [--query-budget 1000] [--epochs N] [--max-rows N] [--sst2-train-rows 4000] [--out table.md]

The full grid (2 data sets × 4 defences × 2 privacy settings, 100+ attacks per cell) takes
hours on two CPU cores; select a slice with the flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SST2 = ROOT.parents[0] / "shared" / "data" / "sst2"
DEFENCES = {"none": (0, "none"), "augmentation": (None, "none"), "front-end": (0, "spelling"),
            "both": (None, "spelling")}


def run_config(data: str, defence: str, privacy: str, args, output_dir: Path):
    """The run config of one cell (None copies in DEFENCES = `--copies`)."""
    from secure_ft.records.config import RunConfig

    copies, front_end = DEFENCES[defence]
    robustness = {"augmentation_copies": args.copies if copies is None else copies, "front_end": front_end}
    if robustness["augmentation_copies"]:
        robustness.update(char_edit_fraction=args.char_edit_fraction, synonym_fraction=1 - args.char_edit_fraction)
    training = {"robustness": robustness, "num_threads": args.threads}
    if args.epochs:
        training["epochs"] = args.epochs
    raw = {"seed": args.seed, "output_dir": str(output_dir), "device": "cpu",
           "model": {"max_length": args.max_length} if args.max_length else {}, "training": training,
           "privacy": {"mode": "dp", "target_epsilon": args.epsilon} if privacy == "dp" else {"mode": "none"},
           "audits": {"robustness": {"recipes": args.recipes, "stress_recipes": [], "min_correct_examples": args.min_correct,
                                     "query_budget": args.query_budget, "workers": args.workers}}}
    if data == "sst2":
        raw["data"] = {"source": str(args.sst2 / "glue_sst2_train.tsv"), "format": "tsv", "text_column": "sentence",
                       "label_column": "label", "group_columns": [], "max_rows": args.sst2_train_rows}
    elif args.max_rows:
        raw["data"] = {"max_rows": args.max_rows}
    return RunConfig.model_validate(raw)


def sst2_dev_split(config):
    """SST-2's official dev split in the canonical form the audits read (labels as the run's)."""
    from secure_ft.records.data import read_table, validate

    raw, where = read_table(str(config.data.source).replace("glue_sst2_train", "glue_sst2_dev"), "tsv")
    frame, _, _ = validate(raw, config.data.model_copy(update={"max_rows": None}), where)
    return frame


def run_cell(data: str, defence: str, privacy: str, args, workdir: Path) -> dict:
    from audits.context import AuditContext
    from audits.registry import run_audit
    from secure_ft.records.policy import Policy
    from secure_ft.training.central_run import train_run

    config = run_config(data, defence, privacy, args, workdir / f"{data}-{defence}-{privacy}")
    started = time.perf_counter()
    trained = train_run(config, progress=False)
    seconds = time.perf_counter() - started
    splits = trained.splits
    if data == "sst2":
        splits = replace(splits, test=sst2_dev_split(config))
    context = AuditContext(run_dir=trained.run_dir, model_dir=trained.model_dir, splits=splits, config=config,
                           policy=Policy())
    performance = run_audit("performance", context).metrics
    robustness = run_audit("robustness", context)
    guarantee = json.loads((trained.run_dir / "privacy.json").read_text()) if privacy == "dp" else {}
    row = {"data": data, "defence": defence, "privacy": privacy,
           "accuracy": _value(performance.get("accuracy")), "macro_f1": _value(performance.get("macro_f1")),
           "epsilon": guarantee.get("epsilon"), "train_seconds": round(seconds, 1), "recipes": {},
           "robustness_error": robustness.error}
    for recipe, summary in robustness.metrics.get("recipes", {}).items():
        row["recipes"][recipe] = {"accuracy_under_attack": summary["accuracy_under_attack"],
                                  "attacked": summary["attacked"], "examples": summary["examples"]}
    return row


def _value(measure):
    return measure.get("value") if isinstance(measure, dict) else measure


def table(rows: list[dict], recipes: list[str]) -> str:
    header = ["data", "defence", "privacy", "clean acc", "macro-F1",
              *[f"{r} acc. under attack [95% CI] (attacked)" for r in recipes], "ε", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["data"], row["defence"], row["privacy"], _fmt(row["accuracy"]), _fmt(row["macro_f1"])]
        for recipe in recipes:
            result = row["recipes"].get(recipe)
            if result is None:
                cells.append(f"error: {row['robustness_error']}" if row["robustness_error"] else "—")
                continue
            estimate = result["accuracy_under_attack"] or {}
            cells.append(f"{_fmt(estimate.get('value'))} [{_fmt(estimate.get('ci_lower'))}, "
                         f"{_fmt(estimate.get('ci_upper'))}] ({result['attacked']})")
        cells += [_fmt(row["epsilon"]), _fmt(row["train_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="finance,sst2", help="comma-separated: finance, sst2")
    parser.add_argument("--defences", default="none,augmentation,front-end,both")
    parser.add_argument("--privacy", default="dp,plain", help="comma-separated: dp, plain")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--copies", type=int, default=4, help="augmentation copies K per example")
    parser.add_argument("--char-edit-fraction", type=float, default=0.5,
                        help="share of character edits among the changes (the rest are WordNet synonym swaps)")
    parser.add_argument("--recipes", default="deepwordbug,pwws,embedding-swap", help="default: the audit's")
    parser.add_argument("--min-correct", type=int, default=100, help="correctly classified texts attacked per recipe")
    parser.add_argument("--query-budget", type=int, default=1000, help="the audit's default")
    parser.add_argument("--workers", type=int, default=2, help="the audit's default")
    parser.add_argument("--epochs", type=int, help="training.epochs (default: the product default)")
    parser.add_argument("--max-rows", type=int, help="finance: stratified subsample (speed)")
    parser.add_argument("--sst2", type=Path, default=SST2)
    parser.add_argument("--sst2-train-rows", type=int, default=4000, help="seeded subset of SST-2's train split")
    parser.add_argument("--max-length", type=int, default=None, help="model.max_length (default: the product's)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) and the rows (JSON beside it)")
    args = parser.parse_args()
    args.recipes = [r for r in args.recipes.split(",") if r]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="secure-ft-robust-bench-"))
    for data in args.data.split(","):
        for privacy in args.privacy.split(","):
            for defence in args.defences.split(","):
                if defence not in DEFENCES:
                    parser.error(f"--defences: unknown {defence!r}; choose from {', '.join(DEFENCES)}")
                rows.append(run_cell(data, defence, privacy, args, workdir))
                print(json.dumps(rows[-1]), flush=True)
    text = table(rows, args.recipes)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
