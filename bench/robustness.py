"""Robustness audit speed: stock TextAttack against the audit's own attack path, same outcomes.

The same recipe attacks the same seeded examples (the audit's sample of the builtin:cfpb test
split, cut to the part the model reads) four ways:

* stock, equal length: TextAttack's ``Attacker`` with the stock ``HuggingFaceModelWrapper``,
  the tokenizer's ``model_max_length`` set to the trained length (the fair baseline);
* ours, one process: the audit's engine (length-capped dynamic padding, inference mode,
  logits cached by token ids) in this process;
* ours, two workers: the audit's spawned workers, start-up (imports, model load) included;
* stock as users run it: the stock wrapper with the base tokenizer's ``model_max_length``
  (512 for MiniLM), on the first few examples only (it is slow); compared per example.

Every attack is seeded from (seed, recipe, text) in all four (the stock ``Attack.attack`` is
wrapped to set that seed), so per-example outcomes must be identical; the table says whether
they are. (Padding to 512 changes logits in the last float bits, which can break a tie between
two equally effective edits the other way: same result and query count, another adversarial
text.) Ratios are measured in this run: wall-clock, and CPU seconds (this process plus its
worker processes), which a busy shared machine distorts much less than wall-clock.

    python bench/robustness.py [--model-dir runs/<run>/model] [--recipes deepwordbug]
                               [--examples 10] [--query-budget 200] [--users-examples 3]

With ``--label-preserving`` it instead prices the label-preserving recipes against their
stock families on the same texts, both through the audit's engine in one process (logit
cache cleared before each run, so neither reuses the other's queries): CPU seconds per
attacked example (skipped texts excluded), model queries per attacked example, the ratio
(target ≤ 2×) and the success counts of each.

    python bench/robustness.py --label-preserving [--examples 20] [--query-budget 1000]
                               [--families deepwordbug,pwws,embedding-swap]

Without --model-dir the newest ``runs/*/model`` is used, else the packaged MiniLM with a
fresh seeded head (speed only: its predictions are random).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def find_model(requested: str | None, max_length: int) -> tuple[Path, str]:
    if requested:
        return Path(requested), requested
    runs = sorted(ROOT.glob("runs/*/model/config.json"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1].parent, str(runs[-1].parent.relative_to(ROOT))
    import torch

    from secure_ft.records.config import DataConfig, ModelConfig
    from secure_ft.records.data import load_splits
    from secure_ft.text.models import load_base_model, save_trained_model

    torch.manual_seed(0)
    labels = load_splits(DataConfig(), seed=13).label_names
    model, tokenizer = load_base_model(ModelConfig(max_length=max_length), labels)
    folder = Path(tempfile.mkdtemp(prefix="secure-ft-bench-")) / "model"
    save_trained_model(model, tokenizer, folder)
    return folder, "packaged MiniLM, untrained head"


class Clock:
    """Wall seconds and CPU seconds (this process and its finished children) since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def outcome(status: str, perturbed: str, queries: int) -> tuple:
    return status, perturbed, queries


def stock_run(model, tokenizer_dir: Path, recipe: str, examples, max_length: int, budget: int, seed: int,
              settings, cache_dir: Path):
    """Stock Attacker + HuggingFaceModelWrapper; returns ((wall, CPU) seconds, outcomes by example index).

    Stock recipes are built by TextAttack's own ``Recipe.build``; `embedding-swap` (ours) is
    built the same way the audit builds it, on the stock wrapper.
    """
    import textattack
    from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult
    from textattack.models.wrappers import HuggingFaceModelWrapper
    from textattack.shared import AttackedText
    from textattack.shared.utils import set_seed
    from transformers import AutoTokenizer

    from audits._attack_runner import example_seed
    from audits._recipes import build_attack, stock_recipes

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = max_length
    wrapper = HuggingFaceModelWrapper(model, tokenizer)
    if recipe in stock_recipes():
        module, name = stock_recipes()[recipe].rsplit(".", 1)
        attack = getattr(__import__(module, fromlist=[name]), name).build(wrapper)
    else:
        attack = build_attack(recipe, wrapper, settings, cache_dir)
        attack.goal_function.batch_size = 32  # TextAttack's default model batch
    plain_attack = attack.attack

    def seeded_attack(example, ground_truth_output):
        text = example.text if isinstance(example, AttackedText) else example
        set_seed(example_seed(seed, recipe, text))
        return plain_attack(example, ground_truth_output)

    attack.attack = seeded_attack
    dataset = textattack.datasets.Dataset([(e.text, e.label) for e in examples])
    args = textattack.AttackArgs(num_examples=len(examples), query_budget=budget, random_seed=seed,
                                 silent=True, disable_stdout=True)
    clock = Clock()
    results = textattack.Attacker(attack, dataset, args).attack_dataset()
    seconds = clock.stop()
    outcomes = {}
    for example, result in zip(examples, results):
        status = ("skipped" if isinstance(result, SkippedAttackResult)
                  else "succeeded" if isinstance(result, SuccessfulAttackResult) else "failed")
        outcomes[example.index] = outcome(status, result.perturbed_result.attacked_text.text,
                                          result.perturbed_result.num_queries)
    return seconds, outcomes


def ours_run(spec, engine, recipe: str, examples, workers: int):
    """The audit's runner; returns ((wall, CPU) seconds, outcomes, per-example CPU seconds)."""
    from audits._attack_runner import run_recipes

    records = []
    tasks = [(recipe, e) for e in sorted(examples, key=lambda e: -len(e.text))]
    clock = Clock()
    run_recipes(engine if workers == 1 else None, spec, tasks, workers, on_record=records.append)
    seconds = clock.stop()
    outcomes = {r["example"]: outcome(r["result"], r["perturbed_text"], r["num_queries"]) for r in records}
    return seconds, outcomes, {r["example"]: r["cpu_seconds"] for r in records}


def same(reference: dict, other: dict, indices) -> str:
    """How many examples agree exactly (result, queries, adversarial text), and on result + queries."""
    exact = sum(1 for i in indices if reference.get(i) == other.get(i))
    if exact == len(indices):
        return f"{exact}/{len(indices)} identical"
    results = sum(1 for i in indices if (reference.get(i) or ())[::2] == (other.get(i) or ())[::2])
    return (f"{exact}/{len(indices)} identical, {results}/{len(indices)} same result and queries "
            "(float ties between equally good edits broken differently)")


LABEL_PRESERVING_PAIRS = [("deepwordbug", "deepwordbug-lp"), ("pwws", "pwws-lp"), ("embedding-swap", "embedding-swap-lp")]


def attacked_cost(engine, spec, recipe: str, examples) -> dict:
    """One recipe over `examples` in this process: CPU s and queries per attacked example, results."""
    from audits._attack_runner import run_recipes

    engine.attack_for(recipe)  # built outside the timing (the encoder loads once per audit)
    engine.wrapper.clear_cache()
    records = []
    run_recipes(engine, spec, [(recipe, e) for e in examples], 1, on_record=records.append)
    attacked = [r for r in records if r["result"] != "skipped"]
    n = len(attacked) or 1
    return {"attacked": len(attacked), "succeeded": sum(r["result"] == "succeeded" for r in attacked),
            "cpu_per_example": sum(r["cpu_seconds"] for r in attacked) / n,
            "wall_per_example": sum(r["seconds"] for r in attacked) / n,
            "queries_per_example": sum(r["num_queries"] for r in attacked) / n}


def label_preserving_main(args, engine, spec, examples) -> int:
    print(f"\n{'family':<16} {'recipe':<18} {'attacked':>8} {'won':>4} {'CPU s/ex':>9} {'wall s/ex':>9} "
          f"{'queries/ex':>10} {'× stock CPU':>11}")
    worst = 0.0
    families = args.families.split(",") if args.families else [stock for stock, _ in LABEL_PRESERVING_PAIRS]
    for stock, constrained in [pair for pair in LABEL_PRESERVING_PAIRS if pair[0] in families]:
        base = attacked_cost(engine, spec, stock, examples)
        lp = attacked_cost(engine, spec, constrained, examples)
        ratio = lp["cpu_per_example"] / base["cpu_per_example"] if base["cpu_per_example"] else float("nan")
        worst = max(worst, ratio)
        for name, row, shown in ((stock, base, "reference"), (constrained, lp, f"{ratio:.2f}×")):
            print(f"{stock:<16} {name:<18} {row['attacked']:>8} {row['succeeded']:>4} {row['cpu_per_example']:9.2f} "
                  f"{row['wall_per_example']:9.2f} {row['queries_per_example']:10.1f} {shown:>11}")
    print(f"\nworst label-preserving / stock CPU ratio per attacked example: {worst:.2f}× (target ≤ 2×: "
          f"{'met' if worst <= 2.0 else 'NOT met'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--recipes", default="deepwordbug")
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--query-budget", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--users-examples", type=int, default=3, help="examples for the slow stock-as-shipped run")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--resources-dir")
    parser.add_argument("--label-preserving", action="store_true",
                        help="price the label-preserving recipes against their stock families on the same texts")
    parser.add_argument("--families", help="with --label-preserving: only these stock families (comma-separated; "
                        "default all three: deepwordbug,pwws,embedding-swap)")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from audits._attack_runner import AttackEngine, EngineSpec
    from audits.offline_resources import resource_root
    from audits.robustness import sample_examples, visible_prefix
    from secure_ft.records.config import DataConfig, RobustnessAuditConfig
    from secure_ft.records.data import load_splits
    from secure_ft.text.models import default_model_dir

    model_dir, model_label = find_model(args.model_dir, args.max_length)
    settings = RobustnessAuditConfig(query_budget=args.query_budget, recipes=args.recipes.split(","))
    spec = EngineSpec(model_dir=str(model_dir), max_length=args.max_length, settings=settings.model_dump(),
                      resources_root=str(resource_root(args.resources_dir)), seed=args.seed)
    engine = AttackEngine(spec)  # imports textattack offline; its model is shared with the stock runs
    model = engine.wrapper.model
    examples = sample_examples(load_splits(DataConfig(), args.seed).test, args.examples, args.seed)
    examples = [replace(e, text=visible_prefix(e.text, engine.wrapper.tokenizer, args.max_length)) for e in examples]
    shipped_length = AutoTokenizer.from_pretrained(default_model_dir()).model_max_length
    indices = [e.index for e in examples]
    few = examples[:args.users_examples]
    if args.label_preserving:
        print(f"model: {model_label}; {len(examples)} examples of builtin:cfpb (visible part, ≤{args.max_length} "
              f"tokens); query budget {args.query_budget}; torch threads {torch.get_num_threads()}")
        return label_preserving_main(args, engine, spec, examples)

    print(f"model: {model_label}; {len(examples)} examples of builtin:cfpb (visible part, ≤{args.max_length} tokens); "
          f"query budget {args.query_budget}; torch threads {torch.get_num_threads()}")
    rows, users_rows = [], []
    for recipe in settings.recipes:
        engine.attack_for(recipe)  # build outside the timings, like the stock recipe's build below
        stock_s, stock = stock_run(model, model_dir, recipe, examples, args.max_length, args.query_budget, args.seed,
                                   settings, engine.resources.cache_dir)
        one_s, one, per_example = ours_run(spec, engine, recipe, examples, workers=1)
        two_s, two, _ = ours_run(spec, engine, recipe, examples, workers=2)
        users_s, users = stock_run(model, model_dir, recipe, few, shipped_length, args.query_budget, args.seed,
                                   settings, engine.resources.cache_dir)
        ours_few = sum(per_example[e.index] for e in few)
        rows += [
            (recipe, f"stock Attacker, length {args.max_length}", stock_s, len(examples), stock_s, "reference"),
            (recipe, "ours, 1 process", one_s, len(examples), stock_s, same(stock, one, indices)),
            (recipe, "ours, 2 workers (start-up included)", two_s, len(examples), stock_s, same(stock, two, indices)),
        ]
        users_rows.append((recipe, len(few), users_s, ours_few, same(users, one, [e.index for e in few])))
    print(f"\n{'recipe':<14} {'run':<38} {'wall s':>7} {'CPU s':>7} {'ex/min':>7} {'× wall':>7} {'× CPU':>6}  outcomes")
    for recipe, run, (wall, cpu), count, (base_wall, base_cpu), note in rows:
        print(f"{recipe:<14} {run:<38} {wall:7.1f} {cpu:7.1f} {60 * count / wall:7.1f} "
              f"{base_wall / wall:6.2f}× {base_cpu / cpu:5.2f}×  {note}")
    print(f"\nstock as users run it (base tokenizer's model_max_length = {shipped_length}) vs ours, 1 process, "
          "on the same first examples (CPU seconds; ours from its per-example records):")
    for recipe, count, (wall, cpu), ours_cpu, note in users_rows:
        print(f"{recipe:<14} {count} examples: stock {cpu:.1f} s, ours {ours_cpu:.1f} s → "
              f"{cpu / ours_cpu if ours_cpu else float('nan'):.2f}×  ({note})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
