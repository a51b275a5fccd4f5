"""The server side of a federated run, from config to hand-off; the ServerApp's body.

`FederatedServer.run(grid, context)` does, in order:

1. write ``config.yaml`` and start the run ledger (as a central run does);
2. load the server's data: its validation split is the held-out set every round is judged
   on, its test split is left for the audits (in a simulation the training split is what the
   sites are partitioned from; in a deployment it is not used);
3. send the label set (its numbering) with every message, and hash the base checkpoint (and,
   with ``training.robustness.front_end: spelling``, the front end every participant builds
   from public resources, `federated.front_end`: the server validates through it too);
4. build the model, send its trainable tensors as the initial global model, and run the
   rounds with `federated.strategy` (or the SecAgg+ workflow in `federated.secagg`);
5. hand off the best round's global model (`federated.handoff`).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid

from federated import protocol
from federated.central_dp import central_guarantee
from federated.front_end import federation_front_end, front_end_sha256
from federated.handoff import write_handoff
from federated.site_identity import federation_run_key
from federated.partition import partition_sites
from federated.round_book import RoundBook, ServerEvaluator
from federated.stoppable_grid import StoppableGrid
from federated.strategy import build_strategy, sites_per_round
from federated.task import (arrays_to_record, base_model_sha256, build_model, record_bytes, secure_ft_version,
                            trainable_arrays)
from secure_ft.config import RunConfig
from secure_ft.data import load_splits
from secure_ft.errors import ConfigError, SecureFTError
from secure_ft.run_directory import RunDirectory
from secure_ft.models import resolve_device, trainable_parameter_count
from secure_ft.central_run import TrainedRun
from secure_ft.probe import trainee_and_datasets
from secure_ft.robust_training import through_front_end
from secure_ft.transfer_choice import resolve_run_config

log = logging.getLogger(__name__)


class FederationFailed(SecureFTError):
    """A federated run aggregated no round: no site delivered a usable update."""


def require_declared_labels(config: RunConfig) -> None:
    """A deployed federation trains one label set, fixed by the run config before any site answers."""
    if config.data.labels is None:
        where = config.source_path or "the run config"
        raise ConfigError(
            f"{where}: data.labels is not set; a deployed run needs the federation's label set declared "
            "(e.g. data.labels: [billing, fraud, service]) so that every site numbers the labels the same way "
            "and checks its own file against it before training")


def engine_label(config: RunConfig) -> str:
    parts = [f"federated-{config.federated.strategy}"]
    if config.privacy.mode == "dp":
        parts.append("site-dp")
    if config.federated.central_dp != "none":
        parts.append(f"central-dp-{config.federated.central_dp}")
    if config.federated.secagg:
        parts.append("secagg+")
    return "+".join(parts)


class FederatedServer:
    """Runs one federated training run on a Flower grid and writes its run directory.

    Parameters
    ----------
    config
        The run config; its `federated` section drives the rounds.
    run_dir
        The run directory to create (must not hold a run yet).
    simulated
        True when the sites are Flower simulation partitions of `config.data`; False in a
        deployment, where every site reads its own file.
    """

    def __init__(self, config: RunConfig, run_dir: Path, *, simulated: bool):
        self.config = config.model_copy(update={"mode": "federated"})
        self.run_dir = Path(run_dir)
        self.simulated = simulated
        self.result: TrainedRun | None = None
        self.stop = threading.Event()  # set from outside (Ctrl-C) to end the run at the next poll

    def run(self, grid: Grid, context: Context) -> TrainedRun:
        config, run_dir = self.config, self.run_dir
        grid = StoppableGrid(grid, self.stop)
        if not self.simulated:
            require_declared_labels(config)
        # deployed: the label set is data.labels exactly; the coordinator's small hold-out never narrows it
        splits = load_splits(config.data, config.seed, keep_declared_labels=not self.simulated)
        # resolved once, from the whole federation's rows (a simulation partitions exactly these; a
        # deployment's sites are unknown before they answer, so the server's own rows stand in), and
        # sent resolved to every site: all sites train the same transfer with the same recipe
        config, choice = resolve_run_config(config, len(splits.train))
        choice_record = {**choice.to_dict(), "rows_counted": "the training rows the sites are partitioned from"
                         if self.simulated else "the server's own training rows (sites' sizes are not known yet)"}
        self.config = config
        run = RunDirectory(run_dir)
        ledger = run.start(config, splits)
        run.write_transfer_choice(choice_record)
        ledger.append("transfer_resolved", **choice_record)
        if self.simulated:
            sites = [site.summary(splits.label_names) for site in partition_sites(splits, config.federated, config.seed)]
        else:
            sites = []
        device = resolve_device(config.device)
        model, tokenizer = build_model(config, splits.label_names)
        front_end = federation_front_end(config, tokenizer)
        initial = trainable_arrays(model)
        trainable, total = trainable_parameter_count(model)
        evaluator = None
        if config.federated.server_evaluation:
            # the probe: its head (the model's own classifier) on the validation rows' cached embeddings
            evaluated, (validation,) = trainee_and_datasets(
                model.to(device), tokenizer, config.model, [through_front_end(front_end, splits.validation)],
                cache_dir=run.cache_dir, device=device, batch_size=config.training.eval_batch_size, progress=False)
            evaluator = ServerEvaluator(evaluated, validation, splits.label_names, config, device)
        book = RoundBook(evaluator, ledger, config.federated.rounds)
        update_bytes = record_bytes(initial)
        ledger.append("federated_started", mode="simulation" if self.simulated else "deployment",
                      engine=engine_label(config), rounds=config.federated.rounds,
                      sites=[site["name"] for site in sites] or config.federated.num_sites,
                      exchanged_tensors=len(initial), exchanged_parameters=trainable, update_bytes=update_bytes)
        log.info("federated %s: %d rounds, %d sites per round, %d tensors (%d parameters, %.1f kB) exchanged per site",
                 engine_label(config), config.federated.rounds, sites_per_round(config.federated), len(initial),
                 trainable, update_bytes / 1024)

        instructions = {
            protocol.RUN_CONFIG: config.to_yaml().encode("utf-8"),  # bytes: Flower logs configs, masking bytes
            protocol.LABELS: json.dumps(splits.label_names),
            protocol.RUN_DIR: str(run_dir.resolve()) if self.simulated else "",
            protocol.VERSION: secure_ft_version(),
            protocol.BASE_MODEL_SHA256: base_model_sha256(config.model),
            protocol.FRONT_END_SHA256: front_end_sha256(front_end),
            protocol.FEDERATION_ID: federation_run_key(run_dir),  # the sites' odometers are per run, resumes included
        }
        central = None
        if config.federated.secagg:
            from federated.secagg import run_secagg

            run_secagg(grid, context, config, initial, instructions, book)
        else:
            strategy, accountant = build_strategy(config.federated)
            book.source = strategy
            strategy.start(grid=grid, initial_arrays=arrays_to_record(initial), num_rounds=config.federated.rounds,
                           timeout=config.federated.round_timeout_s, train_config=ConfigRecord(dict(instructions)),
                           evaluate_config=ConfigRecord(dict(instructions)), evaluate_fn=book.evaluate)
            if accountant is not None:
                central = central_guarantee(config.federated, accountant, strategy.strategy)
        if not sites:
            sites = _sites_seen(book.source.outcomes)

        problems = [site for entry in book.rounds for site in entry["sites"] if site["status"] in ("rejected", "failed")]
        if not any(entry["aggregated"] for entry in book.rounds):
            first = problems[0] if problems else None
            ledger.append("federated_failed", problems=problems[:20])
            raise FederationFailed(
                f"the federated run into {run_dir} aggregated none of its {config.federated.rounds} rounds"
                + (f"; first problem: {first['site']} {first['status']}: {first['reason']}" if first else "")
                + ". Fix the failing sites (see the log and the run ledger) and start a new run"
            )
        federation = {
            "mode": "simulation" if self.simulated else "deployment",
            "engine": engine_label(config),
            "strategy": config.federated.strategy,
            **({"server_learning_rate": config.federated.server_learning_rate,
                "server_momentum": config.federated.server_momentum}
               if config.federated.strategy == "fedavgm" else {}),
            "rounds": config.federated.rounds,
            "rounds_aggregated": sum(entry["aggregated"] for entry in book.rounds),
            "sites_per_round": sites_per_round(config.federated),
            "partition": config.federated.partition if self.simulated else "own data per site",
            "update_validation": {"norm_bound": config.federated.update_norm_bound,
                                  "on_oversized_update": config.federated.on_oversized_update},
            "site_dp": config.privacy.mode == "dp",
            "central_dp": config.federated.central_dp,
            "secagg": config.federated.secagg,
            "transfer_choice": choice_record,
            "exchanged_tensors": sorted(initial),
            "update_bytes": update_bytes,
            "problems": problems,
        }
        self.result = write_handoff(run_dir=run_dir, config=config, splits=splits, book=book, model=model.cpu(),
                                    tokenizer=tokenizer, front_end=front_end, ledger=ledger,
                                    engine=engine_label(config), device=device, trainable=trainable, total=total,
                                    sites=sites, federation=federation, central=central)
        return self.result


def _sites_seen(outcomes) -> list[dict]:
    """Deployment: the sites the server heard from, with the rows they reported."""
    seen: dict[str, dict] = {}
    for outcome in outcomes:
        entry = seen.setdefault(outcome.site, {"name": outcome.site, "train_rows": None, "validation_rows": None})
        if getattr(outcome, "key_sha256", None):
            entry["key_sha256"] = outcome.key_sha256  # deployments: the registered key the site authenticated with
        rows = outcome.metrics.get(protocol.NUM_EXAMPLES)
        if rows is not None:
            entry["train_rows" if outcome.phase == "train" else "validation_rows"] = int(rows)
    return list(seen.values())
