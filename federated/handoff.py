"""Hand-off: the global model leaves a federated run exactly as a central run's model does.

The run directory (`secure_ft.records.run_directory`) gets the same records as a central run's, so the
same audits, gate, report and export apply unchanged:

    model/          save_pretrained folder (LoRA merged) + model_hash.json, and the
                    spelling front end (front_end/) the sites and the server read through
    config.yaml     the effective config (mode: federated)
    data.json       the server's split summary, plus the sites (rows, groups, label mix)
    metrics.json    the central keys (steps, best, epochs = rounds, ...) and every round's record
    privacy.json    with DP: per-site sample-level (ε, δ) under "sites" — computed by the
                    accountant from the site's own signed statement of everything it
                    released, kept beside it with the rounds the coordinator sent it
                    training in — the central client-level guarantee under "central", and
                    at the top level the weakest (largest ε) guarantee that applies
    federated.json  how the run was federated: sites, strategy, validation, DP, SecAgg+
    ledger.jsonl    config, data fingerprint, every round, the saved model
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from federated.round_book import RoundBook
from secure_ft.privacy.accountants import epsilon_from_history
from secure_ft.privacy.signed_history import releases_history, unaccounted_rounds
from secure_ft.records.config import RunConfig
from secure_ft.records.data import DatasetSplits
from secure_ft.records.run_directory import PRIVACY_FILE, FEDERATED_FILE, RunDirectory
from secure_ft.records.run_ledger import Ledger
from secure_ft.text.models import save_trained_model
from secure_ft.text.spelling import SpellingFrontEnd
from secure_ft.training.central_run import TrainedRun
from secure_ft.training.probe import encoder_graph_folder
from secure_ft.training.robust_training import robustness_summary

log = logging.getLogger(__name__)


def site_guarantees(book: RoundBook, config: RunConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each DP site's guarantee: from its latest privacy statement, else its last report (ε only grows).

    A site's statement (`federated.site_identity`, checked and, in deployments, signature-verified
    on arrival) lists everything it released, including rounds whose update never arrived or
    was discarded; its ε is the accountant's on that history. Without a statement (an older
    secure-ft) the last per-reply report is kept, marked ``statement_missing``. The inputs (accountant, δ, the (σ, q, steps) history) come with every update
    (`federated.site_privacy`), so the gate recomputes each site's ε from ``privacy.json``
    alone, for simulated and deployed sites alike. A site that reported ε without them (an
    older secure-ft) is kept, marked, and fails that recomputation.
    """
    sites: dict[str, dict[str, Any]] = {}
    histories: dict[str, list[tuple[int, list]]] = {}  # site -> (round, reported history) in round order
    for entry in book.rounds:
        for site in entry["sites"]:
            metrics = site["metrics"]
            if site["phase"] != "train" or "epsilon" not in metrics:
                continue
            previous = sites.get(site["site"], {}).get("epsilon", -math.inf)
            inputs = site.get("privacy") or {}
            if inputs.get("history"):
                histories.setdefault(site["site"], []).append(
                    (entry["round"], inputs["history"], int(metrics.get("local-steps", 0))))
            sites[site["site"]] = {
                "epsilon": max(previous, float(metrics["epsilon"])),
                "delta": float(metrics["delta"]),
                "unit": "record (sample-level DP-SGD on the site's own rows)",
                "accountant": inputs.get("accountant", config.privacy.accountant),
                "last_round": entry["round"],
                **({key: inputs[key] for key in ("history", "noise_multiplier", "sample_rate", "steps",
                                                 "max_grad_norm", "dataset_size", "target_epsilon",
                                                 "opacus_version", "data_fingerprint") if key in inputs}
                   if inputs else {"inputs_missing": "the site sent no accountant inputs with its updates"}),
            }
    for name, reports in histories.items():
        _account_restarted_accountants(name, sites[name], reports)
    for name, record in site_records(book).items():
        if record["statement"] is not None:
            sites[name] = stated_guarantee(record)  # the signed history replaces the per-reply report
        elif name in sites:
            sites[name]["statement_missing"] = record["statement_problem"] or "the site sent no privacy statement"
    for name, guarantee in sites.items():
        details = RunDirectory(run_dir).site(name).privacy_file
        if details.is_file():
            guarantee["details"] = str(details.relative_to(run_dir))
    return sites


def site_records(book: RoundBook) -> dict[str, dict[str, Any]]:
    """What the coordinator kept per site (`federated.site_identity.SiteBook`): rounds sent, statements, keys."""
    sites = getattr(book.source, "sites", None)
    return sites.records() if sites is not None else {}


def stated_guarantee(record: dict[str, Any]) -> dict[str, Any]:
    """A site's guarantee from its statement (checked on arrival): ε by the accountant on everything it released."""
    payload = json.loads(record["statement"]["payload"])
    history = releases_history(payload)
    epsilon = epsilon_from_history(str(payload["accountant"]), tuple(map(tuple, history)), float(payload["delta"]))
    last = history[-1] if history else [None, None, 0]
    released = sorted({int(release["round"]) for release in payload["releases"]})
    return {
        "epsilon": float(epsilon),
        "delta": float(payload["delta"]),
        "unit": "record (sample-level DP-SGD on the site's own rows)",
        "accountant": payload["accountant"],
        "last_round": released[-1] if released else None,
        "history": history,
        "noise_multiplier": last[0],
        "sample_rate": last[1],
        "steps": int(sum(entry[2] for entry in history)),
        **{key: payload.get(key) for key in ("max_grad_norm", "dataset_size", "target_epsilon", "opacus_version",
                                             "data_fingerprint")},
        "site_stated_epsilon": payload.get("epsilon"),
        "rounds_released": released,
        "rounds_not_released": payload.get("not_released") or [],
        "rounds_sent": record["rounds_sent"],
        "rounds_failed_without_release": record["rounds_failed_without_release"],
        "unaccounted_rounds": unaccounted_rounds(payload, record["rounds_sent"],
                                                 record["rounds_failed_without_release"]),
        "key_sha256": record.get("key_sha256"),
        "statement": record["statement"],
    }


def _extends(earlier: list, later: list) -> bool:
    """True when the history `later` continues `earlier` (same segments, the last one possibly longer)."""
    if len(later) < len(earlier):
        return False
    for index, (before, after) in enumerate(zip(earlier, later)):
        if not (math.isclose(before[0], after[0]) and math.isclose(before[1], after[1])):
            return False
        last = index == len(earlier) - 1
        if (before[2] > after[2]) if last else (before[2] != after[2]):
            return False
    return True


def _steps(history: list) -> int:
    return int(sum(segment[2] for segment in history))


def _account_restarted_accountants(name: str, guarantee: dict[str, Any],
                                   reports: list[tuple[int, list, int]]) -> None:
    """A site whose reported history stops continuing its earlier one restarted its accountant.

    Each round's report must hold the previous report's history plus the steps the site took
    this round. When it does not, the site's accountant started again (it lost its records, or
    keyed them by something a resumed coordinator changes): the releases of the earlier report
    happened and still count, so they are composed with everything after, and ε is recomputed
    from that whole history.
    """
    from secure_ft.privacy.accountants import epsilon_from_history

    released: list = []
    restarts = []
    previous = reports[0][1]
    for server_round, history, steps in reports[1:]:
        if not _extends(previous, history) or _steps(history) - _steps(previous) < steps:
            released += [list(segment) for segment in previous]
            restarts.append(server_round)
        previous = history
    if not restarts:
        return
    combined = released + [list(segment) for segment in previous]
    epsilon = epsilon_from_history(guarantee["accountant"], tuple(tuple(segment) for segment in combined),
                                   guarantee["delta"])
    log.warning("site %s: its privacy history restarted in round(s) %s; ε recomputed over every release it "
                "reported: %.3f (it reported %.3f)", name, restarts, epsilon, guarantee["epsilon"])
    guarantee.update(history=combined, epsilon=epsilon,
                     steps=_steps(combined), accountant_restarts=restarts)


def privacy_summary(sites: dict[str, dict[str, Any]], central: dict[str, Any] | None,
                    planned_sites: list[str], silent: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """privacy.json for a federated run, or None when neither sites nor server added DP noise."""
    if not sites and central is None:
        return None
    scopes = [(f"site:{name}", guarantee) for name, guarantee in sorted(sites.items())]
    if central is not None:
        scopes.append(("central", central))
    scope, weakest = max(scopes, key=lambda item: (item[1]["epsilon"], item[1]["delta"]))
    summary: dict[str, Any] = {
        "epsilon": weakest["epsilon"],
        "delta": weakest["delta"],
        "accountant": weakest["accountant"],
        "scope": scope,
        "note": ("top-level (ε, δ) is the weakest guarantee that applies: the largest ε among every site's "
                 "sample-level guarantee and the central client-level one"),
        "sites": sites,
    }
    if central is not None:
        summary["central"] = central
    unreported = [name for name in planned_sites if name not in sites]
    if sites and unreported:
        summary["sites_without_report"] = unreported  # never delivered a DP update: nothing of theirs is in the model
    if silent:  # sent training but never stated a release: each round must be explained, or it is a gap
        summary["sites_without_statement"] = silent
    return summary


def write_handoff(*, run_dir: Path, config: RunConfig, splits: DatasetSplits, book: RoundBook, model, tokenizer,
                  front_end: SpellingFrontEnd | None = None, ledger: Ledger, engine: str, device: str, trainable: int,
                  total: int, sites: list[dict[str, Any]], federation: dict[str, Any],
                  central: dict[str, Any] | None) -> TrainedRun:
    """Save the best round's global model and every record a central run would have."""
    from federated.task import load_arrays

    arrays = book.best_arrays if book.best_arrays is not None else book.final_arrays
    if arrays is not None:
        load_arrays(model, arrays)
    run = RunDirectory(run_dir)
    model_dir = run.model_dir
    # audits and serving apply the front end, and run the encoder graph the sites embedded with
    digest = save_trained_model(model, tokenizer, model_dir, front_end=front_end,
                                encoder_graph=encoder_graph_folder(model, tokenizer, config.model))

    site_privacy = site_guarantees(book, config, run_dir)
    silent = {name: {"rounds_sent": record["rounds_sent"],
                     "rounds_failed_without_release": record["rounds_failed_without_release"],
                     "unaccounted_rounds": unaccounted_rounds(None, record["rounds_sent"],
                                                              record["rounds_failed_without_release"]),
                     "key_sha256": record.get("key_sha256")}
              for name, record in site_records(book).items()
              if name not in site_privacy and config.privacy.mode == "dp"}
    privacy = privacy_summary(site_privacy, central, [site["name"] for site in sites], silent)
    artifacts = []
    choice = federation.get("transfer_choice")
    if privacy is not None:
        if choice is not None:
            privacy = {**privacy, "hyperparameters": choice["hyperparameters"], "transfer_choice": choice}
        run.write_privacy(privacy)
        artifacts.append(PRIVACY_FILE)
    run.write_federation({**federation, "sites": sites})
    artifacts.append(FEDERATED_FILE)
    run.write_data_summary({**splits.summary(), "sites": sites,
                            "train_rows_used_for_training": federation["mode"] == "simulation"})

    epochs, steps = [], 0
    for entry in book.rounds:
        scores = entry["server_evaluation"] or {}
        train = entry["train"] or {}
        steps += int(sum(site["metrics"].get("local-steps", 0) for site in entry["sites"]
                         if site["phase"] == "train" and site["status"] in ("accepted", "clipped")))
        extra = {key: value for key, value in train.items() if key in ("epsilon", "delta")}
        epochs.append({"epoch": entry["round"], "step": steps, "train_loss": train.get("train-loss"),
                       "val_accuracy": scores.get("accuracy"), "val_macro_f1": scores.get("macro_f1"),
                       "val_per_class_recall": scores.get("per_class_recall"), "seconds": entry["seconds"],
                       "extra": extra})
    best = next((entry for entry in epochs if entry["epoch"] == book.best_round), None)
    train_examples = len(splits.train) if federation["mode"] == "simulation" else int(sum(
        site.get("train_rows") or 0 for site in sites))
    metrics = {
        "steps": steps,
        "best_epoch": book.best_round,
        "best_round": book.best_round,
        "stopped_reason": f"completed {len(book.rounds)} of {config.federated.rounds} rounds",
        "resumed_from_step": None,
        "epochs": epochs,
        "engine": engine,
        "device": device,
        "transfer": config.model.transfer,
        **({"transfer_choice": choice, "hyperparameters": choice["hyperparameters"]} if choice is not None else {}),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples": train_examples,
        "majority_baseline_accuracy": splits.majority_baseline("validation"),
        "best": None if best is None or best["val_accuracy"] is None else
        {"val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"]},
        "model_sha256": digest,
        "robust_training": robustness_summary(config.training.robustness, front_end),
        "initial_evaluation": book.initial,
        "rounds": book.rounds,
    }
    run.write_metrics(metrics)
    ledger.append("model_saved", model_sha256=digest, steps=steps, best_round=book.best_round,
                  stopped_reason=metrics["stopped_reason"], artifacts=artifacts,
                  epsilon=None if privacy is None else privacy["epsilon"],
                  augmentation_copies=config.training.robustness.augmentation_copies,
                  front_end=None if front_end is None else "spelling",
                  uses_private_vocabulary=metrics["robust_training"]["uses_private_vocabulary"])
    log.info("global model of round %d saved to %s (sha256 %s…)", book.best_round, model_dir, digest[:16])
    return TrainedRun(run_dir, model_dir, digest, splits, metrics)
