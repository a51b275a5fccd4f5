"""Adversarial robustness audit: TextAttack recipes against the trained model, fully offline.

An attack recipe perturbs a correctly classified text, within the recipe's constraints, until
the model changes its answer or the query budget runs out. Per recipe the audit reports

* ``original_accuracy``: share of the sampled test texts the model gets right unperturbed;
* ``accuracy_under_attack``: share it still gets right after the attack (the robust accuracy);
* ``attack_success_rate``: successful attacks over attempted ones (texts already misclassified
  are *skipped*, not attacked);
* ``avg_perturbed_word_pct`` (successful attacks), ``avg_queries`` (attempted attacks),
  ``budget_exhausted`` (attacks stopped by the query budget: with many, accuracy under attack
  is an upper bound), wall time, examples per minute and CPU seconds;
* the recipe's goal, transformation, search and constraints, so an auditor knows what
  "robust" meant.

Judged recipes and the stress test. The default recipes are the *label-preserving* variants
of three families (:mod:`audits._label_preserving`): character edits (``deepwordbug-lp``),
WordNet synonym swaps (``pwws-lp``) and embedding-neighbour swaps (``embedding-swap-lp``),
each held to the validity constraints of the policy's ``robustness.validity`` (Morris et al.
2020; A2T, Yoo & Qi 2021), with meaning judged by an independent sentence encoder
(all-mpnet-base-v2, whose digest the result records). Only those gate: the policy's
``gated_recipes`` (else the config's ``recipes``). The stock, unconstrained recipes
(``stress_recipes``: ``deepwordbug``, ``pwws``, ``embedding-swap``) run beside them on the
first ``stress_min_correct_examples`` of the same sampled texts, reported under
``stress_recipes`` and never judged: a stock success may change what the text says. Each
recipe's summary carries the policy's threat model in words, the constraints as built,
per-constraint rejection counts (label-preserving recipes) and what the model's spelling front
end made of the changed words (``front_end_effect``: restored, turned into another real
word, left as typed). TextAttack's other recipes are selectable by name where their
resources exist. Nothing is downloaded: the NLTK corpora and the encoder come from
:mod:`audits.offline_resources` / :mod:`audits.independent_encoder` and every download path
is shut (:mod:`audits._textattack_offline`). A recipe that cannot run fails the audit with
its reason.

Relative threshold: ``relative_accuracy_under_attack`` is accuracy under attack over the clean
accuracy of the same sample (interval ends likewise); the regulated policy requires its lower
end to reach 0.5 — a realistic attacker may not take away more than half of what the model
gets right — besides the absolute floor, the success-rate and budget checks and at least
100 attacked texts.

How many: by default (``num_examples: null``) the audit walks a seeded shuffle of the test
split until ``min_correct_examples`` (100) texts the model classifies right are in — all of
the split when it has fewer — so every recipe attacks at least 100 texts whatever the model's
accuracy. Each judged rate (accuracy under attack, attack success rate, budget-exhausted
fraction) is reported as ``{"value", "ci_lower", "ci_upper"}`` with its Wilson 95% interval;
a policy with ``robustness.use_ci_bound`` judges the pessimistic end (30 attacked texts gave
intervals about ±0.17 wide; 100 give about ±0.1). A fixed ``num_examples`` samples that many.

Cost: model queries dominate. A search that ends without flipping the model has tried every
word it may change, so on a robust model each recipe spends its whole search: measured on the
default model with its spelling front end (64 tokens, about 50 words), DeepWordBug used about
140 queries, PWWS 290 (at most 470) and the embedding swap about 100–200. The default
``query_budget`` of 1000 lets those searches finish (200, the earlier default, stopped most
PWWS searches before they had ranked the words — which the policy's
``max_budget_exhausted_fraction`` now refuses as evidence). Time grows with the attacked
texts × the queries each needs × the cost of one forward pass (length²-ish); ``workers`` and
``device: cuda`` divide it, and an interrupted run resumes.

The adversarial pairs go to ``audits/robustness/adversarial_examples.csv`` in the run
directory, and the judged recipes' successful attacks to ``review_sheet.csv`` beside it
(original and perturbed text with the changed words in ⟦ ⟧, columns for a reviewer's
verdict). Both are test data and may hold personal data: metrics and notes never contain text,
and the HTML report names the files without their content. Their SHA-256 digests are in the
result's ``evidence_sha256``; the result is bound in the signed verdict, so they are too.
An interrupted audit resumes from ``.progress.jsonl`` beside it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean

import pandas as pd

from audits._attack_progress import ProgressStore, run_key
from audits._attack_runner import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    AttackEngine,
    AttackExample,
    EngineSpec,
    RecipeRun,
    run_recipes,
)
from audits._intervals import estimate, wilson
from audits._recipes import describe_attack
from audits.context import AuditContext
from audits.registry import register
from audits.policy_checks import threshold_checks
from audits.result import AuditResult, Check
from secure_ft.errors import AuditError, SecureFTError
from secure_ft.records.atomic_files import atomic_write_text
from secure_ft.records.model_identity import model_digest

log = logging.getLogger(__name__)

NAME = "robustness"
EVIDENCE_FILE = "adversarial_examples.csv"
REVIEW_SHEET_FILE = "review_sheet.csv"
REVIEW_COLUMNS = ["recipe", "example", "row", "label_name", "perturbed_prediction_name", "changes",
                  "original_marked", "perturbed_marked", "keeps_meaning", "keeps_label", "reviewer_note"]
EVIDENCE_COLUMNS = [
    "recipe", "example", "row", "label", "label_name", "original_prediction", "original_prediction_name",
    "perturbed_prediction", "perturbed_prediction_name", "result", "num_queries", "budget_exhausted", "words_changed", "word_count",
    "perturbed_word_pct", "seconds", "cpu_seconds", "changed_words", "original_text", "perturbed_text",
]
CI_LEVEL = 0.95  # Wilson intervals of the rates
_MIN_TASKS_PER_WORKER = 2  # below this, starting worker processes costs more than it saves


@register(NAME)
def robustness_audit(context: AuditContext) -> AuditResult:
    """Attack a seeded sample of the test split with each configured recipe; judge per the policy."""
    settings = context.config.audits.robustness
    policy = context.policy.robustness
    max_length = context.config.model.max_length
    started = time.perf_counter()

    gated = list(dict.fromkeys(policy.gated_recipes or settings.recipes))
    recipes = list(dict.fromkeys([*gated, *settings.recipes]))  # the policy's recipes run whatever the config says
    stress = [r for r in dict.fromkeys(settings.stress_recipes) if r not in recipes]

    spec = EngineSpec(model_dir=str(context.model_dir), max_length=max_length, settings=settings.model_dump(),
                      resources_root=str(_resources_root(settings.resources_dir)), seed=context.config.seed,
                      device=context.device, validity=policy.validity.model_dump())
    engine = AttackEngine(spec)
    _check_labels(engine.wrapper.model, context.splits.label_names)
    test = context.splits.test
    examples = sample_examples(test, settings.num_examples or len(test), spec.seed)
    if settings.visible_text_only:
        examples = [replace(e, text=visible_prefix(e.text, engine.wrapper.tokenizer, max_length)) for e in examples]
    if settings.num_examples is None:  # enough attacked texts to decide, not a fixed sample size
        examples = until_enough_correct(examples, engine.wrapper, settings.min_correct_examples)
    # the stress test attacks the first of the same texts: its numbers sit beside the judged ones
    stress_examples = until_enough_correct(examples, engine.wrapper, settings.stress_min_correct_examples) if stress else []

    # build every recipe before attacking anything: one that cannot run fails fast, with its reason
    descriptions, errors = {}, {}
    for recipe in [*recipes, *stress]:
        try:
            descriptions[recipe] = describe_attack(engine.attack_for(recipe))
        except SecureFTError as error:
            errors[recipe] = str(error)

    evidence_dir = context.evidence_dir(NAME)
    key_settings = {**settings.model_dump(), "validity": policy.validity.model_dump(), "gated": gated}
    store = ProgressStore(evidence_dir, run_key(model_digest(Path(context.model_dir)), examples,
                                                key_settings, max_length, spec.seed), settings.resume)
    sample = {recipe: (stress_examples if recipe in stress else examples) for recipe in descriptions}
    tasks = [(recipe, e) for recipe in descriptions
             for e in sorted(sample[recipe], key=lambda e: -len(e.text))  # longest first: the workers finish together
             if not store.done(recipe, e.index)]
    workers = min(settings.workers, max(1, len(tasks) // _MIN_TASKS_PER_WORKER))
    bars = _ProgressBars({recipe: sum(1 for r, _ in tasks if r == recipe) for recipe in descriptions})
    try:
        outcome = run_recipes(engine, spec, tasks, workers,
                              on_record=lambda record: (store.add(record), bars.update(record["recipe"])))
    finally:
        bars.close()
    for recipe, run in outcome.recipes.items():
        if run.error is not None:
            errors[recipe] = run.error if run.error.startswith(f"recipe {recipe}") else f"recipe {recipe}: {run.error}"

    ran = [recipe for recipe in descriptions if recipe not in errors]
    records = [store.records[(recipe, e.index)] for recipe in ran for e in sample[recipe]
               if (recipe, e.index) in store.records]
    evidence_path = evidence_dir / EVIDENCE_FILE
    write_evidence(evidence_path, records, context.splits.label_names)
    review_path = evidence_dir / REVIEW_SHEET_FILE
    write_review_sheet(review_path, [r for r in records if r["recipe"] in gated], context.splits.label_names)
    evidence = [str(path.relative_to(context.run_dir)) for path in (evidence_path, review_path)]

    metrics = {
        "num_examples": len(examples),
        "min_correct_examples": settings.min_correct_examples if settings.num_examples is None else None,
        "stress_examples": len(stress_examples),
        "ci_level": CI_LEVEL,
        "ci_method": "wilson",
        "query_budget": settings.query_budget,
        "max_length": max_length,
        "seed": spec.seed,
        "workers": outcome.workers,
        "visible_text_only": settings.visible_text_only,
        "example_rows": [e.row for e in examples],
        "offline_resources": {"stopwords": engine.resources.stopwords_source,
                              "wordnet": engine.resources.wordnet_source},
        "front_end": engine.classifier.describe_front_end(),  # attacked as served: raw text → front end → model
        "gated_recipes": [r for r in gated if r in ran],
        "validity": policy.validity.model_dump(),
        "independent_encoder": _independent_encoder_record(descriptions, engine.resources.root),
        # the evidence files' digests: this result is bound in the signed verdict, so they are too
        "evidence_sha256": {relative: _sha256(context.run_dir / relative) for relative in evidence},
        "recipes": {},
        "stress_recipes": {},
    }
    checks, notes = [], []
    for recipe in ran:
        summary = recipe_summary([r for r in records if r["recipe"] == recipe], outcome.recipes.get(recipe))
        summary.update(descriptions[recipe])
        summary["gated"] = recipe in gated
        threat = policy.threat_models.get(recipe)
        summary["threat_model"] = threat.model_dump() if threat is not None else None
        metrics["stress_recipes" if recipe in stress else "recipes"][recipe] = summary
        if recipe in gated:
            checks += recipe_checks(recipe, summary, policy)
        if summary["budget_exhausted"]:
            notes.append(
                f"{recipe}: {summary['budget_exhausted']} of {summary['succeeded'] + summary['failed']} attacks "
                f"stopped at the query budget ({settings.query_budget}); accuracy under attack is an upper bound "
                "(raise audits.robustness.query_budget for a stronger attack)"
            )
    if stress:
        notes.append(f"stress test, not judged: {', '.join(r for r in stress if r in ran)} on the first "
                     f"{len(stress_examples)} sampled texts")
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    error = "; ".join(errors[recipe] for recipe in [*recipes, *stress] if recipe in errors) or None
    if error is None:
        store.remove()
    notes.append(f"adversarial examples are test data and may contain personal data: kept in {', '.join(evidence)} only")
    return AuditResult.from_checks(NAME, metrics, checks, evidence=evidence, notes=notes, error=error)


def _independent_encoder_record(descriptions: dict, resources_root: Path) -> dict | None:
    """Name, folder and SHA-256 of the independent sentence encoder, when a recipe used it."""
    if not any(c.startswith("IndependentSentenceEncoder(") for d in descriptions.values() for c in d["constraints"]):
        return None
    from audits.independent_encoder import independent_encoder

    encoder = independent_encoder(resources_root)  # already assembled by the recipe: reads its recorded digest
    return {"name": encoder.name, "sha256": encoder.sha256, "path": str(encoder.path)}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_examples(test: pd.DataFrame, num_examples: int, seed: int) -> list[AttackExample]:
    """A seeded random sample of the test split (all of it when it is smaller)."""
    if test.empty:
        raise AuditError("the test split is empty; the robustness audit needs held-out examples "
                         "(check data.split.test_fraction)")
    chosen = test.sample(n=min(num_examples, len(test)), random_state=seed)
    return [AttackExample(index=i, row=int(row), text=str(text), label=int(label))
            for i, (row, text, label) in enumerate(zip(chosen["row"], chosen["text"], chosen["label"]))]


def until_enough_correct(examples: list[AttackExample], wrapper, wanted: int, chunk: int = 64) -> list[AttackExample]:
    """The shortest prefix of `examples` holding `wanted` texts the model classifies right (all when fewer).

    Only correctly classified texts are attacked (the others are skipped), so a fixed sample
    size leaves the number of attacks, and the width of their intervals, to the model's
    accuracy. Walking the seeded order until `wanted` are right fixes the number of attacks.
    """
    correct = 0
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        predicted = wrapper([e.text for e in part]).argmax(dim=-1).tolist()  # the model as served
        for offset, (example, label) in enumerate(zip(part, predicted)):
            correct += int(label == example.label)
            if correct >= wanted:
                return examples[:start + offset + 1]
    return examples


def visible_prefix(text: str, tokenizer, max_length: int) -> str:
    """The longest run of whole words from the start of `text` that fits in `max_length` tokens."""
    if len(tokenizer(text, truncation=False, verbose=False)["input_ids"]) <= max_length:
        return text
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    low, high = 1, len(ends)  # invariant: a prefix of `low` words fits (one word always kept)
    while low < high:
        middle = (low + high + 1) // 2
        if len(tokenizer(text[:ends[middle - 1]], truncation=False, verbose=False)["input_ids"]) <= max_length:
            low = middle
        else:
            high = middle - 1
    return text[:ends[low - 1]]


def recipe_metrics(records: list[dict]) -> dict:
    """Aggregate numbers of one recipe from its per-example records (TextAttack's definitions)."""
    total = len(records)
    counts = {status: sum(1 for r in records if r["result"] == status) for status in (SUCCEEDED, FAILED, SKIPPED)}
    attempted = counts[SUCCEEDED] + counts[FAILED]
    successes = [r for r in records if r["result"] == SUCCEEDED]
    exhausted = sum(1 for r in records if r["budget_exhausted"])
    return {
        "examples": total,
        "succeeded": counts[SUCCEEDED],
        "failed": counts[FAILED],
        "skipped": counts[SKIPPED],
        "attacked": attempted,
        "original_accuracy": (total - counts[SKIPPED]) / total if total else None,
        # the rates the policy judges, each with its Wilson interval ({"value", "ci_lower", "ci_upper"})
        "accuracy_under_attack": rate(counts[FAILED], total),
        "attack_success_rate": rate(counts[SUCCEEDED], attempted),
        "avg_perturbed_word_pct": mean(r["perturbed_word_pct"] for r in successes) if successes else None,
        "avg_queries": mean(r["num_queries"] for r in records if r["result"] != SKIPPED) if attempted else None,
        "budget_exhausted": exhausted,
        "budget_exhausted_fraction": rate(exhausted, attempted) if attempted else estimate(0.0, 0.0, 0.0),
        "relative_accuracy_under_attack": relative_to_clean(rate(counts[FAILED], total),
                                                            (total - counts[SKIPPED]) / total if total else None),
        "avg_seconds": mean(r["seconds"] for r in records if r["result"] != SKIPPED) if attempted else None,
        "constraint_rejections": constraint_rejections(records),
        "front_end_effect": front_end_effect(records),
    }


def relative_to_clean(under_attack: dict | None, clean: float | None) -> dict | None:
    """Accuracy under attack over the clean accuracy of the same sample, interval ends likewise.

    The clean accuracy is a count on the very texts attacked, not an estimate of another
    quantity, so only accuracy under attack carries sampling error here: judging the lower end
    is judging "lower Wilson bound of accuracy under attack >= limit x clean accuracy".
    """
    if under_attack is None or not clean:
        return None
    return estimate(under_attack["value"] / clean, under_attack["ci_lower"] / clean, under_attack["ci_upper"] / clean)


def constraint_rejections(records: list[dict]) -> dict | None:
    """Summed per-constraint counts of a recipe that counts them (label-preserving recipes), else None."""
    counted = [r["constraint_counts"] for r in records if r.get("constraint_counts")]
    if not counted:
        return None
    total = {"candidates": 0, "rejected_by": {}, "positions_excluded_by": {}}
    for counts in counted:
        total["candidates"] += counts["candidates"]
        for part in ("rejected_by", "positions_excluded_by"):
            for name, number in counts[part].items():
                total[part][name] = total[part].get(name, 0) + number
    total["passed_to_model"] = total["candidates"] - sum(total["rejected_by"].values())
    return total


def front_end_effect(records: list[dict]) -> dict | None:
    """What the served spelling front end made of the words an attack changed (attacked examples).

    ``restored``: read back as the original word; ``other_word``: corrected to a different
    word (an edit the front end turned into another real word: "olan" → "plan"); ``as_typed``:
    left as the attack wrote it. None when the model has no front end or nothing was changed.
    """
    pairs = [(old, new, read) for r in records if r["result"] != SKIPPED and r.get("front_end_reads") is not None
             for (old, new), read in zip(r["changed_words"], r["front_end_reads"])]
    if not pairs:
        return None
    restored = sum(1 for old, _, read in pairs if read.lower() == old.lower())
    as_typed = sum(1 for old, new, read in pairs if read == new and read.lower() != old.lower())
    other = len(pairs) - restored - as_typed
    return {"changed_words": len(pairs), "restored": restored, "other_word": other, "as_typed": as_typed,
            "other_word_share": round(other / len(pairs), 4)}


def rate(successes: int, trials: int) -> dict | None:
    """successes / trials with its Wilson interval at `CI_LEVEL`; None when nothing was tried."""
    if not trials:
        return None
    return estimate(successes / trials, *wilson(successes, trials, CI_LEVEL))


def recipe_summary(records: list[dict], run: RecipeRun | None) -> dict:
    """:func:`recipe_metrics` plus this session's timing (resumed records cost nothing now)."""
    summary = recipe_metrics(records)
    attacked = run.attacked if run else 0
    wall = run.wall_time if run else 0.0
    summary["wall_time_s"] = round(wall, 2)
    summary["examples_per_minute"] = round(60.0 * attacked / wall, 2) if wall > 0 else None
    summary["resumed_examples"] = len(records) - attacked
    # CPU time is what the attacks cost whatever else the machine was doing
    summary["cpu_seconds"] = round(sum(r.get("cpu_seconds", 0.0) for r in records), 2)
    return summary


def recipe_checks(recipe: str, summary: dict, policy) -> list[Check]:
    """The policy's thresholds for `recipe` (or its "default") applied to the recipe's numbers."""
    return threshold_checks(policy, summary, scope=f"{recipe}.", key=recipe, ci_level=CI_LEVEL,
                            missing_note="no example was attacked: the model got every sampled example wrong")


def write_evidence(path: Path, records: list[dict], label_names: list[str]) -> None:
    """The adversarial pairs as CSV, one row per (recipe, example), with class names beside ids."""
    rows = [{**r, "changed_words": json.dumps(r.get("changed_words") or [], ensure_ascii=False)} for r in records]
    frame = pd.DataFrame(rows, columns=[c for c in EVIDENCE_COLUMNS if not c.endswith("_name")])
    for column in ("label", "original_prediction", "perturbed_prediction"):
        frame.insert(frame.columns.get_loc(column) + 1, f"{column}_name",
                     [label_names[v] if 0 <= v < len(label_names) else str(v) for v in frame[column]])
    atomic_write_text(path, frame[EVIDENCE_COLUMNS].to_csv(index=False))


def marked_words(text: str, words: list[str], indices: set[int]) -> str:
    """`text` with the words at `indices` (TextAttack's word positions) wrapped in ⟦ ⟧."""
    out, cursor = [], 0
    for position, word in enumerate(words):
        found = text.find(word, cursor)
        if found < 0:  # TextAttack normalised the word: mark nothing further rather than mis-mark
            break
        out.append(text[cursor:found])
        out.append(f"⟦{word}⟧" if position in indices else word)
        cursor = found + len(word)
    out.append(text[cursor:])
    return "".join(out)


def write_review_sheet(path: Path, records: list[dict], label_names: list[str]) -> None:
    """Successful attacks of the judged recipes, changed words marked, for a human reviewer.

    One row per adversarial example: the true class, the class the model gave after the
    attack, each change ("job → occupation"), both texts with the changed words in ⟦ ⟧, and
    empty ``keeps_meaning`` / ``keeps_label`` / ``reviewer_note`` columns to fill in. Test
    text: it stays in the run directory, out of the HTML report.
    """
    from textattack.shared import AttackedText

    def name(value: int) -> str:
        return label_names[value] if 0 <= value < len(label_names) else str(value)

    rows = []
    for record in records:
        if record["result"] != SUCCEEDED:
            continue
        original, perturbed = AttackedText(record["original_text"]), AttackedText(record["perturbed_text"])
        changed = set(original.all_words_diff(perturbed))
        pairs = record.get("changed_words") or []
        rows.append({
            "recipe": record["recipe"], "example": record["example"], "row": record["row"],
            "label_name": name(record["label"]), "perturbed_prediction_name": name(record["perturbed_prediction"]),
            "changes": "; ".join(f"{old} → {new}" for old, new in pairs),
            "original_marked": marked_words(record["original_text"], original.words, changed),
            "perturbed_marked": marked_words(record["perturbed_text"], perturbed.words, changed),
            "keeps_meaning": "", "keeps_label": "", "reviewer_note": "",
        })
    atomic_write_text(path, pd.DataFrame(rows, columns=REVIEW_COLUMNS).to_csv(index=False))


def _resources_root(configured: str | None) -> Path:
    from audits.offline_resources import resource_root

    return resource_root(configured)


def _check_labels(model, label_names: list[str]) -> None:
    config = model.config
    if config.num_labels != len(label_names):
        raise AuditError(
            f"the trained model has {config.num_labels} classes but the data has {len(label_names)} "
            f"({', '.join(label_names)}); audit the model with the data it was trained on"
        )
    names = [config.id2label.get(i, "") for i in range(config.num_labels)]
    if not all(re.fullmatch(r"LABEL_\d+", n) for n in names) and names != list(label_names):
        raise AuditError(
            f"the trained model's labels {names} differ from the data's {list(label_names)}; "
            "audit the model with the data (and label order) it was trained on"
        )


class _ProgressBars:
    """One tqdm bar per recipe on a terminal; in a log (no terminal), a line at every tenth of a recipe."""

    def __init__(self, totals: dict[str, int]):
        self.totals = totals
        self.bars = {}
        self.done: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def update(self, recipe: str) -> None:
        if recipe not in self.bars:
            from tqdm import tqdm

            self.bars[recipe] = tqdm(total=self.totals.get(recipe, 0), desc=f"robustness {recipe}",
                                     unit="example", disable=None, leave=True)
            self.started[recipe] = time.monotonic()
        self.bars[recipe].update(1)
        self.done[recipe] = done = self.done.get(recipe, 0) + 1
        total = self.totals.get(recipe, 0)
        if self.bars[recipe].disable and total and (done % max(1, total // 10) == 0 or done == total):
            rate = done / max(time.monotonic() - self.started[recipe], 1e-9)
            log.info("robustness %s: %d/%d examples (%.2f examples/s)", recipe, done, total, rate)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
