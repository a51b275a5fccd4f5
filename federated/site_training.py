"""One site's round: check the server's instructions, train on the site's rows, report back.

Used by both ClientApp paths (the Message API in `federated.client_app` and the legacy
SecAgg+ path in `federated.secagg`). What a site checks before it trains:

- the run config parses, and the label set (and so the label numbering) is the server's;
- its base checkpoint has the hash the server announced (frozen weights never travel, so a
  different checkpoint would silently train a different model);
- with ``training.robustness.front_end: spelling``, the front end it builds from public
  resources (`federated.front_end`) is the one the server announced;
- the secure-ft version matches (a mismatch is logged: the exchanged tensors may differ);
- a deployed site started with ``--site-policy`` checks the run against its own limits
  (`federated.site_policy`) and refuses, naming the rule, before anything trains.

A deployed site also keeps a lifetime odometer of its data file across runs
(``<state-dir>/privacy-budget``, `secure_ft.privacy.budget_ledger`): each round's steps are
written ahead before training, and the entry holds exactly the releases once the round's
release is recorded, before the reply leaves.

It reads every text through that front end and, with ``augmentation_copies`` K > 0, trains
each row with K perturbed copies averaged before clipping (`secure_ft.training.robust_training`): its
σ, sampling rate and steps are those of the same run without copies.

With DP, every round goes through the site's odometer (`federated.site_odometer`, in its
state folder): marked in progress before training, its release recorded — atomically, before
the reply leaves — after it; the next round (a fresh process, perhaps after a SuperNode
restart) restores the accountant from there, so the budget and its cap survive restarts.
The reply carries the odometer's whole history as a statement, signed with the site's
SuperNode key when the node config names one (``auth-key``). The site also keeps its own
records there: the site ledger (``ledger.jsonl``, one line per round), ``privacy.json`` and
the privacy ledger.

A failure reaches the coordinator as the rule broken and counts only (`federated.site_errors`);
the full text stays in the site's log and its ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import yaml
from federated import protocol
from federated.front_end import check_same_front_end, federation_front_end
from federated.site_data import Site, resolve_site
from federated.site_errors import SiteFailure, public_failure
from federated.site_odometer import SiteOdometer
from federated.site_policy import (BUDGET_FOLDER, POLICY_KEY, check_site_policy, data_file_sha256, load_site_policy,
                                   site_round_steps)
from federated.site_privacy import site_privacy_report
from federated.site_engine import SiteEngine, private_site_engine, site_noise_multiplier
from federated.task import (build_model, evaluate_model, load_arrays, round_seed, base_model_sha256,
                            secure_ft_version, trainable_arrays, train_locally)
from secure_ft.errors import ConfigError, ModelError
from secure_ft.privacy.budget_ledger import RELEASED, BudgetLedger, RunSpend, steps_beyond
from secure_ft.privacy.engine import resolve_delta
from secure_ft.privacy.signed_history import key_sha256, load_private_key, public_line_of, seal_statement
from secure_ft.records.config import RunConfig, config_from_dict
from secure_ft.records.run_directory import RunDirectory
from secure_ft.records.run_ledger import Ledger
from secure_ft.text.models import resolve_device
from secure_ft.text.spelling import SpellingFrontEnd
from secure_ft.training.probe import trainee_and_datasets
from secure_ft.training.robust_training import robust_datasets, through_front_end
from secure_ft.training.training_loop import TrainingEngine

log = logging.getLogger(__name__)


@dataclass
class Instructions:
    """What the server asked of a site this round."""

    config: RunConfig
    labels: list[str]
    server_round: int
    run_dir: str = ""
    proximal_mu: float = 0.0
    base_model_sha256: str = ""
    front_end_sha256: str = ""
    version: str = ""
    run_key: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Instructions":
        text = record.get(protocol.RUN_CONFIG)
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the server's message carries no run config; the ServerApp and ClientApp are from "
                              "different secure-ft versions")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"the server's run config is not valid YAML: {error}") from None
        try:
            labels = json.loads(record.get(protocol.LABELS, ""))
        except (TypeError, ValueError):
            labels = None
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
            raise ConfigError("the server's message carries no valid label set; the ServerApp and ClientApp are "
                              "from different secure-ft versions")
        return cls(
            config=config_from_dict(raw, "run config sent by the server"),
            labels=labels,
            server_round=int(record.get(protocol.SERVER_ROUND, 0)),
            run_dir=str(record.get(protocol.RUN_DIR, "")),
            proximal_mu=float(record.get(protocol.PROXIMAL_MU, 0.0)),
            base_model_sha256=str(record.get(protocol.BASE_MODEL_SHA256, "")),
            front_end_sha256=str(record.get(protocol.FRONT_END_SHA256, "")),
            version=str(record.get(protocol.VERSION, "")),
            run_key=str(record.get(protocol.FEDERATION_ID, "")),
        )


@dataclass
class SiteReport:
    """A site's answer: its name, new tensors (train only) and metrics."""

    site: str
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None  # DP: the accountant inputs (`federated.site_privacy`)
    statement: dict[str, Any] | None = None  # DP: the odometer's history, sealed (`secure_ft.privacy.signed_history`)


def read_instructions(record: Mapping[str, Any], node_config: Mapping[str, Any]) -> Instructions:
    """The server's instructions; a malformed message fails naming this site."""
    try:
        return Instructions.from_record(record)
    except Exception as error:
        log.exception("site %s cannot read the server's instructions", _node_label(node_config))
        raise public_failure(_node_label(node_config), "reading the server's instructions", error) from None


def check_instructions(instructions: Instructions) -> None:
    if instructions.version and instructions.version != secure_ft_version():
        log.warning("the server runs secure-ft %s, this site %s; install the same version everywhere",
                    instructions.version, secure_ft_version())
    if instructions.base_model_sha256:
        local = base_model_sha256(instructions.config.model)
        if local and local != instructions.base_model_sha256:
            error = ModelError(
                f"this site's base model {instructions.config.model.name_or_path!r} has hash {local[:12]}… but the "
                f"server's has {instructions.base_model_sha256[:12]}…; install the same base model at every site"
            )
            error.public_rule = "the site's base model differs from the server's"
            raise error


def train_site_round(instructions: Instructions, global_arrays: Mapping[str, np.ndarray],
                     node_config: Mapping[str, Any], run_id: int = 0) -> SiteReport:
    """Train the global model on this site's rows for one round; raises `SiteFailure` naming the site."""
    site_name, stage, odometer, spend, engine = _node_label(node_config), "loading its data", None, None, None
    try:
        config = instructions.config
        site = resolve_site(node_config, config, instructions.labels, instructions.run_dir,
                            instructions.run_key or run_id)
        site_name = site.name
        stage = "checking the server's model"
        check_instructions(instructions)
        signing_key = _signing_key(node_config)
        run_key = instructions.run_key or f"flower-{run_id}"
        if config.privacy.mode == "dp":
            odometer = SiteOdometer.open(site.state_dir, site.name, run_key)
        if site.deployed:
            stage = "checking the site policy"
            spend = _site_lifetime_spend(node_config, site, instructions, run_key, odometer)
        if odometer is not None:
            odometer.begin(instructions.server_round)  # before training: a crash from here on is "interrupted"
        stage = "training"
        started = time.perf_counter()
        model, tokenizer = build_model(config, instructions.labels)
        load_arrays(model, global_arrays)
        front_end = site_front_end(instructions, tokenizer)
        device = resolve_device(config.device)
        # the probe trains the head on embeddings (copies included) cached in the site's own folder,
        # encoded in round 1 only; copies are seeded by the run seed and each row, so every round draws the same
        trainee, train_set, (validation_set,) = robust_datasets(
            model, tokenizer, config, site.data.train, [site.data.validation], front_end=front_end,
            cache_dir=RunDirectory(site.state_dir).cache_dir, device=device)
        engine = SiteEngine(_inner_engine(config, site, odometer), proximal_mu=instructions.proximal_mu,
                            restore=odometer.engine_state if odometer is not None else None)
        if spend is not None and odometer is not None:  # written ahead: this round's steps may run from here
            rate, per_round = site_round_steps(config, len(site.data.train))
            spend.reserve(odometer.history(), [[odometer.noise_for(len(site.data.train)), rate, per_round]])
        try:
            result = train_locally(trainee, train_set, validation_set, instructions.labels, config,
                                   seed=round_seed(config.seed, instructions.server_round, site.name), engine=engine,
                                   device=device)
        finally:
            engine.close()
        last = result.history[-1] if result.history else None
        metrics = {
            protocol.NUM_EXAMPLES: float(len(site.data.train)),
            protocol.TRAIN_LOSS: float(last.train_loss) if last else float("nan"),
            protocol.LOCAL_STEPS: float(result.steps),
            protocol.LOCAL_VAL_ACCURACY: float(last.val_accuracy) if last else float("nan"),
            protocol.SECONDS: time.perf_counter() - started,
        }
        privacy = statement = None
        if engine.private:
            guarantee = engine.guarantee(result)
            # recorded before the update can leave: a lost or discarded reply still counts
            odometer.record_release(instructions.server_round, engine.accountant_history(), engine.state_dict())
            if spend is not None:  # the site's lifetime odometer: exactly what has left this site
                spend.close(odometer.history(), RELEASED)
            privacy = site_privacy_report(guarantee, odometer.history())
            statement = seal_statement(odometer.statement(
                key_sha256(public_line_of(signing_key)) if signing_key is not None else None, guarantee), signing_key)
            metrics[protocol.EPSILON] = float(guarantee["epsilon"])
            metrics[protocol.DELTA] = float(guarantee["delta"])
            engine.write_artifacts(site.state_dir, result)
        Ledger(site.state_dir).append("site_round_trained", round=instructions.server_round, site=site.name,
                                      stopped_reason=result.stopped_reason,
                                      **{key.replace("-", "_"): value for key, value in metrics.items()})
        log.info("site %s, round %d: %d steps, loss %.4f%s", site.name, instructions.server_round, result.steps,
                 metrics[protocol.TRAIN_LOSS],
                 f", ε = {metrics[protocol.EPSILON]:.3f}" if protocol.EPSILON in metrics else "")
        if spend is not None and not engine.private:
            spend.close(None, RELEASED)
        return SiteReport(site.name, metrics, trainable_arrays(result.model), privacy, statement)
    except SiteFailure:
        raise
    except Exception as error:  # the detail stays here; the coordinator gets the rule and counts
        released = None  # without DP there is nothing to account for
        if odometer is not None:
            odometer.record_failure(instructions.server_round, _steps_taken(engine, odometer))
            released = odometer.released_in(instructions.server_round)
            if spend is not None:  # drop this round's reservation: the odometer says what left the site
                spend.close(odometer.history(), RELEASED)
        elif instructions.config.privacy.mode == "dp":
            released = False  # failed before its odometer opened: releases happen only through the odometer
        log.exception("site %s failed in round %d while %s", site_name, instructions.server_round, stage)
        _note_failure(node_config, site_name, instructions, stage, error)
        raise public_failure(site_name, stage, error, released) from None


def evaluate_site(instructions: Instructions, global_arrays: Mapping[str, np.ndarray],
                  node_config: Mapping[str, Any], run_id: int = 0) -> SiteReport:
    """Evaluate the global model on this site's validation rows."""
    site_name = _node_label(node_config)
    try:
        config = instructions.config
        site = resolve_site(node_config, config, instructions.labels, instructions.run_dir, run_id)
        site_name = site.name
        check_instructions(instructions)
        model, tokenizer = build_model(config, instructions.labels)
        load_arrays(model, global_arrays)
        front_end = site_front_end(instructions, tokenizer)
        device = resolve_device(config.device)
        evaluated, (dataset,) = trainee_and_datasets(
            model, tokenizer, config.model, [through_front_end(front_end, site.data.validation)],
            cache_dir=RunDirectory(site.state_dir).cache_dir, device=device,
            batch_size=config.training.eval_batch_size, progress=False)
        scores = evaluate_model(evaluated, dataset, instructions.labels, config, device)
        return SiteReport(site.name, {protocol.NUM_EXAMPLES: float(len(site.data.validation)),
                                      protocol.ACCURACY: scores["accuracy"], protocol.MACRO_F1: scores["macro_f1"]})
    except Exception as error:
        log.exception("site %s failed to evaluate in round %d", site_name, instructions.server_round)
        _note_failure(node_config, site_name, instructions, "evaluating", error)
        raise public_failure(site_name, "evaluating", error) from None


def site_front_end(instructions: Instructions, tokenizer) -> SpellingFrontEnd | None:
    """The front end this site reads its texts through: built here, checked against the server's."""
    front_end = federation_front_end(instructions.config, tokenizer)
    check_same_front_end(front_end, instructions.front_end_sha256)
    return front_end


def _node_label(node_config: Mapping[str, Any]) -> str:
    """A name for the site before its data is resolved (used only if resolving fails)."""
    if node_config.get(protocol.SITE_NAME_KEY):
        return str(node_config[protocol.SITE_NAME_KEY])
    if protocol.PARTITION_ID in node_config:
        return f"partition-{node_config[protocol.PARTITION_ID]}"
    return "unnamed-site"


def _signing_key(node_config: Mapping[str, Any]):
    """The site's SuperNode private key (node config ``auth-key``), or None (simulations)."""
    path = node_config.get(protocol.AUTH_KEY)
    return load_private_key(str(path)) if path else None


def _note_failure(node_config: Mapping[str, Any], site: str, instructions: Instructions, stage: str,
                  error: BaseException) -> None:
    """Keep the full text of a failure in the site's own ledger (it never leaves the site)."""
    try:
        root = node_config.get(protocol.STATE_DIR)
        if root:
            Ledger(Path(str(root)).expanduser()).append(
                "site_round_failed", site=site, round=instructions.server_round, stage=stage,
                error=type(error).__name__, detail=str(error))
    except Exception:  # noqa: BLE001 - the log above already holds the detail
        log.warning("site %s: could not write the failure to its ledger", site)


def _site_lifetime_spend(node_config: Mapping[str, Any], site: Site, instructions: Instructions, run_key: str,
                         odometer: SiteOdometer | None) -> RunSpend:
    """Check the site's own policy (if it has one), then open this run's entry on the site's lifetime odometer.

    The odometer lives in ``<state-dir>/privacy-budget``, keyed by the SHA-256 of the site's
    data file; one entry per federated run, reopened every round.
    """
    config, rows = instructions.config, len(site.data.train)
    ledger = BudgetLedger(site.state_dir.parent / BUDGET_FOLDER)
    fingerprint = data_file_sha256(str(node_config[protocol.DATA_PATH]))
    entry_id = "site-" + hashlib.sha256(f"{site.name}\n{run_key}".encode()).hexdigest()[:24]
    policy_file = node_config.get(POLICY_KEY)
    if policy_file:
        check_site_policy(load_site_policy(str(policy_file)), site=site.name, config=config,
                          labels=instructions.labels, base_model_sha256=base_model_sha256(config.model), rows=rows,
                          sigma=odometer.noise_for(rows) if odometer is not None else None,
                          lifetime_entries=ledger.entries(fingerprint), current_entry=entry_id)
    private = config.privacy.mode == "dp"
    delta = resolve_delta(config.privacy, rows)[0] if private else None
    return RunSpend.reopen_or_open(ledger, entry_id, fingerprint=fingerprint, run=run_key, run_dir=None, kind="site",
                                   mechanism="dp-sgd" if private else "none",
                                   accountant=config.privacy.accountant if private else None, delta=delta,
                                   dataset_size=rows, site=site.name)


def _steps_taken(engine: SiteEngine | None, odometer: SiteOdometer) -> list[list[float]]:
    """The steps a failed round took before it raised (its accountant beyond the odometer's releases)."""
    if engine is None or not engine.private:
        return []
    try:
        return steps_beyond(engine.accountant_history(), odometer.history())
    except Exception:  # noqa: BLE001 - an engine that failed to attach took no step
        log.warning("site %s: the failed round's accountant could not be read; no step recorded for it",
                    odometer.state.get("site"))
        return []


def _inner_engine(config: RunConfig, site: Site, odometer: SiteOdometer | None) -> TrainingEngine:
    if config.privacy.mode != "dp":
        return TrainingEngine(config.training.max_grad_norm, config.training.max_physical_batch_size)
    rows = len(site.data.train)
    sigma = odometer.noise_for(rows)  # the σ this site started the run with, whatever was recalibrated since
    if sigma is None:
        sigma = site_noise_multiplier(config, rows)
        odometer.keep_noise(sigma, rows)
    return private_site_engine(config, rows, site.data.fingerprint(), sigma)
