"""Running attack recipes over examples: in this process, or sharded over worker processes.

Every (recipe, example) attack is seeded from the run seed, the recipe name and the example's
text, so its outcome does not depend on which worker runs it or in what order; one worker or
two give the same records. Workers are spawned processes (never forked: torch's thread pools
do not survive a fork), each with its own copy of the model and a shared task queue, longest
texts first so the shards finish together.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import queue
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

from secure_ft.errors import AuditError, SecureFTError
from secure_ft.records.config import RobustnessAuditConfig

log = logging.getLogger(__name__)

SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"
_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class AttackExample:
    index: int  # position in the audit's seeded sample
    row: int  # row number in the source data
    text: str
    label: int


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to rebuild the attack engine (picklable)."""

    model_dir: str
    max_length: int
    settings: dict  # RobustnessAuditConfig.model_dump()
    resources_root: str
    seed: int
    device: str = "cpu"
    threads: int | None = None  # torch threads; None = leave as is
    validity: dict | None = None  # the policy's robustness.validity (ValidityConstraints.model_dump()); None = defaults

    @property
    def config(self) -> RobustnessAuditConfig:
        return RobustnessAuditConfig.model_validate(self.settings)


def example_seed(seed: int, recipe: str, text: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{recipe}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class AttackEngine:
    """The trained model behind a fast wrapper, and the recipes built on it (lazily, once each)."""

    def __init__(self, spec: EngineSpec):
        import torch

        from audits._textattack_offline import import_textattack
        from audits.offline_resources import ensure_offline_resources
        from secure_ft.text.text_classifier import TextClassifier

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.config = spec.config
        self.resources = ensure_offline_resources(spec.resources_root)
        import_textattack(self.resources)  # before anything that imports textattack
        from audits._attack_model import FastClassifierWrapper

        # the model as served: its front end (if any) corrects every query the attack makes
        self.classifier = TextClassifier.load(spec.model_dir, spec.device, max_length=spec.max_length)
        self.wrapper = FastClassifierWrapper(self.classifier.model, self.classifier.tokenizer, spec.max_length,
                                             batch_size=self.config.batch_size, front_end=self.classifier.front_end)
        self._attacks: dict[str, object] = {}

    def attack_for(self, recipe: str):
        if recipe not in self._attacks:
            from audits._recipes import build_attack
            from audits._textattack_offline import downloads_blocked

            from secure_ft.records.policy import ValidityConstraints

            validity = ValidityConstraints.model_validate(self.spec.validity or {})
            with downloads_blocked(not self.config.allow_downloads):
                self._attacks[recipe] = build_attack(recipe, self.wrapper, self.config, self.resources.cache_dir,
                                                     validity=validity, resources_root=self.resources.root)
        return self._attacks[recipe]

    def attack(self, recipe: str, example: AttackExample) -> dict:
        """Attack one example with one recipe; the evidence record (holds the texts)."""
        from textattack.shared.utils import set_seed

        from audits._textattack_offline import downloads_blocked

        attack = self.attack_for(recipe)
        counting = hasattr(attack, "take_counts")
        if counting:
            attack.take_counts()  # start this example's counts at zero
        set_seed(example_seed(self.spec.seed, recipe, example.text))
        started, cpu_started = time.perf_counter(), time.process_time()
        with downloads_blocked(not self.config.allow_downloads):
            result = attack.attack(example.text, int(example.label))
        record = record_from_result(recipe, example, result, time.perf_counter() - started, self.config.query_budget)
        record["cpu_seconds"] = round(time.process_time() - cpu_started, 4)  # all threads of this process
        if counting:
            record["constraint_counts"] = attack.take_counts()
        front_end = self.classifier.front_end
        if front_end is not None:  # what serving's spelling correction makes of each changed word
            record["front_end_reads"] = [front_end.correct(new) for _, new in record["changed_words"]]
        return record


def record_from_result(recipe: str, example: AttackExample, result, seconds: float, query_budget: int) -> dict:
    from textattack.attack_results import SkippedAttackResult, SuccessfulAttackResult

    original, perturbed = result.original_result, result.perturbed_result
    if isinstance(result, SkippedAttackResult):
        status = SKIPPED
    elif isinstance(result, SuccessfulAttackResult):
        status = SUCCEEDED
    else:
        status = FAILED
    words = original.attacked_text.words
    changed_indices = [] if status == SKIPPED else sorted(original.attacked_text.all_words_diff(perturbed.attacked_text))
    changed = len(changed_indices)
    perturbed_words = perturbed.attacked_text.words
    pairs = [[words[i], perturbed_words[i] if i < len(perturbed_words) else ""] for i in changed_indices]
    queries = int(perturbed.num_queries)
    return {
        "recipe": recipe,
        "example": example.index,
        "row": example.row,
        "label": int(example.label),
        "original_prediction": int(original.output),
        "perturbed_prediction": int(perturbed.output),
        "result": status,
        "num_queries": queries,
        "budget_exhausted": status == FAILED and queries >= query_budget,
        "words_changed": changed,
        "word_count": len(words),
        "perturbed_word_pct": 100.0 * changed / len(words) if words else 0.0,
        "changed_words": pairs,  # [original, perturbed] per changed word position (test text: evidence only)
        "seconds": round(seconds, 4),
        "original_text": original.attacked_text.text,
        "perturbed_text": perturbed.attacked_text.text,
    }


@dataclass
class RecipeRun:
    """Timing and failure of one recipe in this session."""

    started: float | None = None
    finished: float | None = None
    attacked: int = 0
    error: str | None = None

    @property
    def wall_time(self) -> float:
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started


@dataclass
class RunOutcome:
    recipes: dict[str, RecipeRun] = field(default_factory=dict)
    workers: int = 1


def run_recipes(engine: AttackEngine | None, spec: EngineSpec, tasks: list[tuple[str, AttackExample]],
                workers: int, on_record: Callable[[dict], None]) -> RunOutcome:
    """Run (recipe, example) tasks; each finished record goes to `on_record` as it arrives.

    `tasks` are in recipe order. With one worker they run in this process on `engine`;
    otherwise in `workers` spawned processes. A recipe whose attack raises stops being run
    and carries the error; the other recipes go on.
    """
    outcome = RunOutcome(recipes={recipe: RecipeRun() for recipe, _ in tasks}, workers=workers)
    if not tasks:
        return outcome
    if workers <= 1:
        if engine is None:
            engine = AttackEngine(spec)
        for recipe, example in tasks:
            run = outcome.recipes[recipe]
            if run.error is not None:
                continue
            run.started = run.started or time.perf_counter()
            try:
                record = engine.attack(recipe, example)
            except SecureFTError as error:
                run.error = str(error)
            except Exception as error:  # a recipe bug fails that recipe, with its reason
                log.error("recipe %s crashed:\n%s", recipe, traceback.format_exc())
                run.error = f"{type(error).__name__}: {error}"
            else:
                run.attacked += 1
                on_record(record)
            run.finished = time.perf_counter()
        return outcome
    _run_in_workers(spec, tasks, workers, on_record, outcome)
    return outcome


def _run_in_workers(spec: EngineSpec, tasks, workers: int, on_record, outcome: RunOutcome) -> None:
    context = multiprocessing.get_context("spawn")
    task_queue, result_queue = context.Queue(), context.Queue()
    threads = max(1, _usable_cores() // workers)
    worker_spec = EngineSpec(**{**asdict(spec), "threads": threads})
    processes = [context.Process(target=_worker_main, args=(worker_spec, task_queue, result_queue, os.getpid()),
                                 name=f"secure-ft-robustness-{i}", daemon=True) for i in range(workers)]
    for process in processes:
        process.start()
    try:
        for number, (recipe, example) in enumerate(tasks):
            task_queue.put((number, recipe, example))
        for _ in processes:
            task_queue.put(None)
        remaining = len(tasks)
        while remaining:
            try:
                message = result_queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [p for p in processes if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise AuditError(
                        f"robustness worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                        "lower audits.robustness.workers or batch_size if memory ran out"
                    ) from None
                continue
            kind, recipe, payload, started, finished = message
            if kind == "fatal":
                raise AuditError(f"robustness worker could not start: {payload}")
            remaining -= 1
            run = outcome.recipes[recipe]
            run.started = started if run.started is None else min(run.started, started)
            run.finished = finished if run.finished is None else max(run.finished, finished)
            if kind == "record":
                run.attacked += 1
                on_record(payload)
            elif run.error is None:
                run.error = payload
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        task_queue.close()
        result_queue.close()


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _worker_main(spec: EngineSpec, task_queue, result_queue, parent: int) -> None:
    """A worker: build the engine, then attack tasks until the sentinel; report every outcome."""
    exit_with_parent_in_background(parent)
    try:
        engine = AttackEngine(spec)
    except Exception as error:  # reported to the parent, which fails the audit with it
        result_queue.put(("fatal", "", f"{type(error).__name__}: {error}", 0.0, 0.0))
        return
    failed: dict[str, str] = {}
    while True:
        task = task_queue.get()
        if task is None:
            return
        _, recipe, example = task
        started = time.perf_counter()
        if recipe in failed:
            result_queue.put(("error", recipe, failed[recipe], started, started))
            continue
        try:
            record = engine.attack(recipe, example)
        except SecureFTError as error:
            failed[recipe] = str(error)
            result_queue.put(("error", recipe, failed[recipe], started, time.perf_counter()))
        except Exception as error:
            failed[recipe] = f"{type(error).__name__}: {error}"
            result_queue.put(("error", recipe, failed[recipe], started, time.perf_counter()))
        else:
            result_queue.put(("record", recipe, record, started, time.perf_counter()))



def exit_with_parent_in_background(parent: int) -> None:
    """Exit this process as soon as `parent` (the pid that started it) is gone.

    An audit killed outright runs no `finally`, and daemon workers are not killed with it. The
    parent's pid comes from the parent: read here, it may already be init's.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
