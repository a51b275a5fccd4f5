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

A simulation also keeps the run's entry in the privacy budget ledger of the data file its
sites are partitioned from (`federated.simulation_budget`): opened before round 1, written
ahead a round at a time, closed with every site's exact history however the run ends.

Every wait is bounded (`federated.round_loop`, `federated.stoppable_grid`): a round ends at
``round_timeout_s`` and the run at ``run_timeout_s``. After every round the coordinator
writes a checkpoint (`federated.run_checkpoint`); ``resume=True`` continues a run from it,
in the same run directory and ledger (``secure-ft deploy launch --resume RUN_DIR``). A run
that stops for any reason — a site missing, the deadline, Ctrl-C, ``SIGTERM`` — records the
reason in its ledger before it ends (``federated_failed`` / ``federated_interrupted``).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid
from flwr.supercore.exit import add_exit_handler

from federated import protocol
from federated.central_dp import central_guarantee
from federated.front_end import federation_front_end, front_end_sha256
from federated.handoff import write_handoff
from federated.partition import partition_sites
from federated.round_book import RoundBook, ServerEvaluator
from federated.round_loop import RoundLoop, SitesMissing, sites_needed
from federated.run_checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from federated.simulation_budget import KIND as SIMULATION_KIND, SimulatedFederationSpend
from federated.stoppable_grid import RunDeadlinePassed, RunStopped, StoppableGrid
from federated.strategy import build_strategy, sites_per_round
from federated.task import (arrays_to_record, base_model_sha256, build_model, record_bytes, secure_ft_version,
                            trainable_arrays)
from secure_ft.errors import CheckpointError, ConfigError, SecureFTError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import load_splits
from secure_ft.records.run_directory import RunDirectory
from secure_ft.records.run_ledger import Ledger
from secure_ft.text.models import resolve_device, trainable_parameter_count
from secure_ft.training.central_run import TrainedRun
from secure_ft.training.probe import trainee_and_datasets
from secure_ft.training.robust_training import through_front_end
from secure_ft.training.transfer_choice import resolve_run_config

log = logging.getLogger(__name__)


class FederationFailed(SecureFTError):
    """A federated run could not finish: no usable updates, sites missing, or its deadline passed."""


RESUME_HINT = "continue it from its last checkpoint with `secure-ft deploy launch --resume {run_dir}`"


def refuse_used_run_dir(run_dir: Path) -> None:
    """A new federated run never writes into a folder that holds (part of) another run."""
    run = RunDirectory(run_dir)
    used = [path.name for path in (run.config_file, Ledger(run_dir).path, run.model_dir, run.checkpoint_dir)
            if path.exists()]
    if used:
        hint = (RESUME_HINT.format(run_dir=run_dir) if has_checkpoint(run_dir)
                else "it has no checkpoint to continue from")
        raise CheckpointError(f"{run_dir}: already holds a run ({', '.join(used)}); choose a new run directory, "
                              f"or {hint}")


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
    resume
        Continue the run in `run_dir` from its last checkpoint (`config` is its saved config).
    node_names
        Node id → site name from the coordinator's site registry (deployments), used to name
        sites that never answered; without it they are named by what they said in earlier rounds.
    """

    def __init__(self, config: RunConfig, run_dir: Path, *, simulated: bool, resume: bool = False,
                 node_names: Mapping[int, str] | None = None):
        self.config = config.model_copy(update={"mode": "federated"})
        self.run_dir = Path(run_dir)
        self.simulated = simulated
        self.resume = resume
        self.node_names = dict(node_names or {})
        self.result: TrainedRun | None = None
        self.stop = threading.Event()  # set from outside (Ctrl-C) to end the run at the next poll
        self.ledger: Ledger | None = None
        self.checkpoint_round = 0
        self._end_recorded = threading.Event()  # the ledger already says why the run ended
        self._running = False
        self.spend = None  # a simulation's entry in the data set's privacy budget ledger (federated.simulation_budget)
        self._central_accountant = None

    def run(self, grid: Grid, context: Context) -> TrainedRun:
        """Run (or resume) the federated run; any way it ends early is recorded in its ledger first."""
        # Flower's signal handler runs its exit handlers, then force-exits (os._exit) after 5 s: on
        # loaded cores the SystemExit it raises may never reach the except below, so record first.
        add_exit_handler(self._record_signalled_end, run_before_force_exit=True)
        self._running = True
        try:
            result = self._run(grid, context)
        except BaseException as error:  # SystemExit: Flower's SIGTERM handler; KeyboardInterrupt: Ctrl-C
            self._close_spend(error)
            if self._end_recorded.is_set():
                raise
            failure = self._record_end(error)
            if failure is not None:
                raise failure from None
            raise
        finally:
            self._running = False
        self._close_spend(None)
        return result

    def _central_releases(self) -> int | None:
        return None if self._central_accountant is None else int(self._central_accountant.num_releases)

    def _close_spend(self, error: BaseException | None) -> None:
        """Close the simulation's budget entry with the sites' exact histories, however the run ended."""
        if self.spend is None or self.spend.spend.entry["status"] != "running":
            return
        if error is None:
            status, reason = "finished", None
        elif isinstance(error, (RunStopped, KeyboardInterrupt, SystemExit)):
            status, reason = "stopped", f"{type(error).__name__}: stopped from outside"
        else:
            status, reason = "crashed", f"{type(error).__name__}: {error}"[:500]
        try:
            self.spend.close(status, reason, self._central_releases())
        except Exception:  # noqa: BLE001 - the entry keeps its reservation: counted, never fewer
            log.exception("privacy budget: could not close the entry %s; it keeps its reservation", self.spend.path)

    def _record_signalled_end(self) -> None:
        """Flower exit handler (SIGTERM/SIGINT): record the interruption before Flower's forced exit.

        It runs inside a signal handler on the main thread, which may hold the ledger's lock
        mid-append; so the append runs on a thread of its own and is given up after ten
        seconds (the resume then records the run as killed).
        """
        if not self._running or self._end_recorded.is_set():
            return  # a handler left from a run that already ended in this process
        self._end_recorded.set()
        writer = threading.Thread(target=self._record_end, args=(SystemExit("signal"),), daemon=True)
        writer.start()
        writer.join(timeout=10.0)  # Flower starts its force-exit timer only after this returns

    def _record_end(self, error: BaseException) -> SecureFTError | None:
        """Append why the run ended to its ledger; return the error to raise instead, if any."""
        if self.ledger is None:  # nothing was claimed yet
            return None
        resumable = has_checkpoint(self.run_dir)
        hint = (RESUME_HINT.format(run_dir=self.run_dir) if resumable
                else "no round finished, so start a new run")
        common = {"checkpoint_round": self.checkpoint_round if resumable else None, "resumable": resumable}
        if isinstance(error, (RunStopped, KeyboardInterrupt, SystemExit)):
            self.ledger.append("federated_interrupted", reason=f"{type(error).__name__}: stopped from outside",
                               **common)
            log.error("the federated run into %s was stopped; %s", self.run_dir, hint)
            return None
        if isinstance(error, SitesMissing):
            self.ledger.append("federated_failed", reason="sites missing", round=error.server_round,
                               missing_sites=error.missing, **common)
            return FederationFailed(f"{error} (run directory {self.run_dir}; {hint})")
        if isinstance(error, RunDeadlinePassed):
            self.ledger.append("federated_failed", reason="run deadline passed", **common)
            return FederationFailed(f"the federated run into {self.run_dir} passed its deadline of "
                                    f"{self._run_timeout_s():g}s (federated.run_timeout_s); {hint}")
        if isinstance(error, FederationFailed):
            return None  # recorded where it was raised
        self.ledger.append("federated_failed", reason=f"{type(error).__name__}: {error}"[:500], **common)
        return None

    def _run_timeout_s(self) -> float:
        federated = self.config.federated
        # per round: three bounded waits (sites connected, updates, evaluations) and the server's own work
        return federated.run_timeout_s or federated.rounds * 4 * federated.round_timeout_s

    def _run(self, grid: Grid, context: Context) -> TrainedRun:
        config, run_dir = self.config, self.run_dir
        grid = StoppableGrid(grid, self.stop)  # its deadline starts with the rounds (below), not the set-up
        if not self.simulated:
            require_declared_labels(config)
        run = RunDirectory(run_dir)
        if self.resume:
            if not has_checkpoint(run_dir):
                raise CheckpointError(f"{run_dir}: no federated checkpoint to resume from (no round finished); "
                                      "start a new run")
            if config.federated.secagg:
                raise ConfigError(f"{run_dir}: a SecAgg+ run cannot be resumed; start a new run")
        else:
            refuse_used_run_dir(run_dir)
        # deployed: the label set is data.labels exactly; the coordinator's small hold-out never narrows it
        splits = load_splits(config.data, config.seed, keep_declared_labels=not self.simulated)
        # resolved once, from the whole federation's rows (a simulation partitions exactly these; a
        # deployment's sites are unknown before they answer, so the server's own rows stand in), and
        # sent resolved to every site: all sites train the same transfer with the same recipe
        config, choice = resolve_run_config(config, len(splits.train))
        choice_record = {**choice.to_dict(), "rows_counted": "the training rows the sites are partitioned from"
                         if self.simulated else "the server's own training rows (sites' sizes are not known yet)"}
        self.config = config
        if self.resume:
            ledger = self.ledger = Ledger(run_dir)
            _check_same_holdout(ledger, splits.fingerprint, run_dir)
            choice_record = run.read_transfer_choice() or choice_record
        else:
            ledger = self.ledger = run.start(config, splits)
            run.write_transfer_choice(choice_record)
            ledger.append("transfer_resolved", **choice_record)
        if self.simulated:
            partitions = partition_sites(splits, config.federated, config.seed)
            sites = [site.summary(splits.label_names) for site in partitions]
            # every site trains on its part of this one file: its budget ledger records the run before round 1
            self.spend = SimulatedFederationSpend(config, splits.fingerprint,
                                                  [(site.name, len(site.train)) for site in partitions], run_dir,
                                                  resume=self.resume)
            ledger.append("privacy_budget_opened", budget_entry=str(self.spend.path), kind=SIMULATION_KIND)
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
        federation_id = secrets.token_hex(16)
        if not self.resume:
            ledger.append("federated_started", mode="simulation" if self.simulated else "deployment",
                          engine=engine_label(config), rounds=config.federated.rounds, federation_id=federation_id,
                          sites=[site["name"] for site in sites] or config.federated.num_sites,
                          exchanged_tensors=len(initial), exchanged_parameters=trainable, update_bytes=update_bytes)
        log.info("federated %s: %d rounds, %d sites per round, %d tensors (%d parameters, %.1f kB) exchanged per site",
                 engine_label(config), config.federated.rounds, sites_per_round(config.federated), len(initial),
                 trainable, update_bytes / 1024)

        strategy, accountant, first_round = None, None, 1
        if not config.federated.secagg:
            strategy, accountant = build_strategy(config.federated)
            book.source = strategy
        central_strategy = strategy.strategy if strategy is not None and accountant is not None else None
        self._central_accountant = accountant
        if self.resume:
            resumed = load_checkpoint(run_dir, book=book, strategy=strategy, central_strategy=central_strategy,
                                      accountant=accountant)
            federation_id, first_round, initial = resumed.federation_id, resumed.round + 1, resumed.arrays
            self.checkpoint_round = resumed.round
            _record_resumption(ledger, resumed.round, resumed.ledger_lines)
            log.info("resuming the federated run in %s after round %d of %d", run_dir, resumed.round,
                     config.federated.rounds)

        if strategy is not None:  # failed replies and logs name a site by its registered name, never its node id
            strategy.node_sites.update(self.node_names)
        grid.deadline = time.monotonic() + self._run_timeout_s()
        instructions = {
            protocol.FEDERATION_ID: federation_id,
            protocol.RUN_CONFIG: config.to_yaml().encode("utf-8"),  # bytes: Flower logs configs, masking bytes
            protocol.LABELS: json.dumps(splits.label_names),
            protocol.RUN_DIR: str(run_dir.resolve()) if self.simulated else "",
            protocol.VERSION: secure_ft_version(),
            protocol.BASE_MODEL_SHA256: base_model_sha256(config.model),
            protocol.FRONT_END_SHA256: front_end_sha256(front_end),
        }
        central = None
        if self.spend is not None:  # written ahead: the next round (SecAgg+, no hook between rounds: all of them)
            self.spend.reserve(config.federated.rounds - first_round + 1 if config.federated.secagg else 1)
        if config.federated.secagg:
            from federated.secagg import run_secagg

            grid.expect(sites_needed(config.federated), config.federated.round_timeout_s)
            run_secagg(grid, context, config, initial, instructions, book)
        else:
            def checkpoint(server_round: int, _arrays) -> None:
                save_checkpoint(run_dir, server_round=server_round, federation_id=federation_id, book=book,
                                strategy=strategy, central_strategy=central_strategy, accountant=accountant)
                self.checkpoint_round = server_round
                if self.spend is not None:  # the round's exact steps, and the next round's written ahead
                    self.spend.reserve(1 if server_round < config.federated.rounds else 0, self._central_releases())

            loop = RoundLoop(strategy, grid, config.federated, book, site_name=self._site_namer(strategy),
                             known_nodes=lambda: set(self.node_names) | set(strategy.node_sites),
                             on_round_end=checkpoint)
            loop.run(arrays_to_record(initial), ConfigRecord(dict(instructions)), ConfigRecord(dict(instructions)),
                     first_round=first_round)
            if accountant is not None:
                central = central_guarantee(config.federated, accountant, strategy.strategy)
        if not sites:
            sites = _sites_seen(book.source.outcomes)

        problems = [site for entry in book.rounds for site in entry["sites"] if site["status"] in ("rejected", "failed")]
        if not any(entry["aggregated"] for entry in book.rounds):
            first = problems[0] if problems else None
            ledger.append("federated_failed", reason="no round aggregated", problems=problems[:20],
                          checkpoint_round=None, resumable=False)
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

    def _site_namer(self, strategy):
        """A node's name: the registry's (from the key it authenticated with), else what it said earlier."""
        def name(node: int) -> str:
            return self.node_names.get(node) or strategy.node_sites.get(node) or f"node {node}"
        return name


def _check_same_holdout(ledger: Ledger, fingerprint: str, run_dir: Path) -> None:
    recorded = [event["data"].get("fingerprint") for event in ledger.events() if event["event"] == "data_fingerprinted"]
    if recorded and recorded[0] != fingerprint:
        raise CheckpointError(f"{run_dir}: the held-out data changed since the run started (fingerprint "
                              f"{fingerprint[:12]}…, recorded {recorded[0][:12]}…); restore it before resuming")


def _record_resumption(ledger: Ledger, checkpoint_round: int, checkpoint_lines: int) -> None:
    """One ledger for the whole run: say where it resumes and which lines came after the checkpoint."""
    events = ledger.events()
    later = events[checkpoint_lines:]
    if not any(event["event"] in ("federated_interrupted", "federated_failed") for event in later):
        # killed without a chance to say so (SIGKILL, power loss): recorded now, marked as such
        ledger.append("federated_interrupted", reason="the coordinator ended without recording why (killed)",
                      recorded_at_resume=True, checkpoint_round=checkpoint_round, resumable=True)
        events = ledger.events()
    redone = sorted({event["data"]["round"] for event in events[checkpoint_lines:]
                     if event["event"] == "federated_round_done"})
    ledger.append("federated_resumed", checkpoint_round=checkpoint_round, from_round=checkpoint_round + 1,
                  ledger_lines_at_checkpoint=checkpoint_lines, rounds_redone=redone)


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
