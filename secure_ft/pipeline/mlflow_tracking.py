"""MLflow as a view of a finished run directory: params, metrics, tags and artifacts, uploaded afterwards.

The run directory is the record; MLflow shows it where ML teams look. Nothing here is called
while a run trains: :func:`sync_run` reads a finished run directory and uploads it as one
MLflow run, and the same function serves the end of ``secure-ft run`` (through
:func:`track_finished_run`, which never fails the run) and ``secure-ft mlflow sync RUN_DIR``
(which uploads a run whose tracking failed, or one made before tracking was configured).

What is uploaded:

- params: every config key, dotted (``training.epochs``), from the run's ``config.yaml``;
- metrics: ``train.*`` per epoch (or round) from ``metrics.json`` with the ε each epoch reached;
  ``privacy.epsilon`` against the optimizer step at every point of the accountant's history in
  ``privacy.json`` (the ε curve); federated runs also ``round.site.NAME.*`` per round (each site's ε and loss)
  and ``privacy.site.NAME.epsilon`` from each site's own privacy record; every audit metric
  as ``audit.NAME.PATH`` with its interval bounds as ``….ci_lower`` / ``….ci_upper``, and every
  check's measured value as ``check.NAME.CHECK``;
- tags: ``secure_ft.verdict``, policy name and digest, model digest, data fingerprint, ε and δ;
- artifacts: the HTML and JSON report, the signed verdict (``verdict.dsse.json``) and
  ``verdict.json``, ``privacy.json``, ``metrics.json``, the config and the policy.

A run is uploaded once: a second sync finds the MLflow run tagged with the run directory's id
and marked complete, and uploads nothing. A sync that broke off leaves an MLflow run marked
FAILED, and the next sync makes a new, complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from secure_ft.errors import ConfigError, SecureFTError
from secure_ft.records.run_directory import (CONFIG_FILE, DATA_FILE, METRICS_FILE, POLICY_FILE, PRIVACY_FILE,
                                             REPORT_HTML_FILE, REPORT_JSON_FILE, SITES_DIR, VERDICT_ATTESTATION_FILE,
                                             VERDICT_FILE, AUDITS_DIR, FEDERATED_FILE)
from secure_ft.records.run_ledger import Ledger

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: the run directory's name, which identifies it in MLflow
RUN_ID_TAG = "secure_ft.run_dir"
#: set last: an MLflow run without it was cut off and is not counted as uploaded
COMPLETE_TAG = "secure_ft.sync_complete"
ARTIFACT_FILES = (REPORT_HTML_FILE, REPORT_JSON_FILE, VERDICT_ATTESTATION_FILE, VERDICT_FILE, PRIVACY_FILE,
                  METRICS_FILE, CONFIG_FILE, POLICY_FILE, FEDERATED_FILE)
# MLflow's limits (3.x): 100 params and 1000 metrics per batch call, param values of 6000 characters
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
# a tracking server that does not answer: give up after a few quick tries, not MLflow's minutes of backoff
QUICK_RETRIES = "2"
QUICK_BACKOFF = "1"
PROBE_TIMEOUT_S = 5.0


class TrackingError(SecureFTError):
    """MLflow could not be reached or refused an upload; the run directory is unaffected."""


@dataclass(frozen=True)
class SyncResult:
    """One run directory's MLflow run."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # with any password removed
    already_synced: bool
    params: int = 0
    metrics: int = 0
    artifacts: int = 0


def mlflow_module():
    """The ``mlflow`` package, or ConfigError saying how to install it (it is an optional extra)."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("MLflow tracking needs the mlflow package, which is an optional extra: "
                          "pip install 'secure-ft[mlflow]' (or turn tracking off: remove tracking.mlflow.uri "
                          f"and unset ${TRACKING_URI_ENV})") from None
    return mlflow


def resolve_tracking_uri(configured: str | None) -> str | None:
    """The tracking URI to use: the config's, else ``$MLFLOW_TRACKING_URI``; None means tracking is off."""
    return configured or os.environ.get(TRACKING_URI_ENV) or None


def redact_uri(uri: str) -> str:
    """`uri` without a password (``http://user:secret@host`` → ``http://user:***@host``), for logs and the ledger."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def quick_failure() -> Iterator[None]:
    """MLflow's HTTP retries shortened for the duration (unless the user set them): a dead server fails in seconds."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", QUICK_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", QUICK_BACKOFF)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def probe_server(uri: str) -> None:
    """For an HTTP tracking server, one quick ``/health`` request; TrackingError when nothing answers."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return  # a file or database store, or databricks: the client's own errors say what is wrong
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 (the user's URI)
            response.read(64)
    except urllib.error.HTTPError:
        return  # something answers (a proxy may not serve /health); the upload itself will tell
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            return  # something answers over TLS; MLflow's client has its own CA settings (MLFLOW_TRACKING_SERVER_CERT_PATH)
        raise TrackingError(f"MLflow tracking server {redact_uri(uri)} does not answer ({reason}); "
                            "start it or fix tracking.mlflow.uri, then upload the run with "
                            "`secure-ft mlflow sync RUN_DIR`") from None


# -- what a run directory holds, as MLflow sees it -------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise TrackingError(f"{path}: unreadable ({error}); the run directory is damaged") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: Any) -> str:
    """A dotted MLflow key; characters MLflow refuses (only letters, digits, ``_-. /`` are allowed) become ``_``."""
    return _UNSAFE_KEY.sub("_", ".".join(str(part) for part in parts))[:250]


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every config value under its dotted key; nested lists and mappings of leaves as compact JSON."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            params.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            params[metric_key(name)] = text[:MAX_PARAM_VALUE]
    return params


def training_metrics(metrics: dict[str, Any] | None) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` per epoch (or federated round), per round and site, and the best values."""
    if not metrics:
        return []
    rows: list[tuple[str, float, int]] = []
    for index, epoch in enumerate(metrics.get("epochs") or [], start=1):
        step = int(epoch.get("epoch") or epoch.get("round") or index)
        for key, value in {**epoch, **(epoch.get("extra") or {})}.items():
            number = _number(value)
            if number is not None and key not in ("epoch", "round"):
                rows.append((metric_key("train", key), number, step))
    for entry in metrics.get("rounds") or []:
        step = int(entry.get("round") or 0)
        for site in entry.get("sites") or []:
            if site.get("phase") not in (None, "train"):
                continue
            for key, value in (site.get("metrics") or {}).items():
                number = _number(value)
                if number is not None:
                    rows.append((metric_key("round", "site", site.get("site"), key.replace("-", "_")), number, step))
    for key, value in (metrics.get("best") or {}).items():
        number = _number(value)
        if number is not None:
            rows.append((metric_key("best", key), number, 0))
    return rows


def privacy_metrics(privacy: dict[str, Any] | None, prefix: str = "privacy") -> list[tuple[str, float, int]]:
    """The accountant's ε after every recorded step (the ε curve), and the final ε and δ."""
    if not privacy:
        return []
    rows = []
    for item in privacy.get("epsilon_history") or []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and _number(item[1]) is not None:
            rows.append((metric_key(prefix, "epsilon"), float(item[1]), int(item[0])))
    if not rows and _number(privacy.get("epsilon")) is not None:
        rows.append((metric_key(prefix, "epsilon"), float(privacy["epsilon"]), int(privacy.get("steps") or 0)))
    if _number(privacy.get("delta")) is not None:
        rows.append((metric_key(prefix, "delta"), float(privacy["delta"]), 0))
    return rows


def _is_estimate(value: Any) -> bool:
    return isinstance(value, dict) and "value" in value and ("ci_lower" in value or "ci_upper" in value)


def audit_metrics(name: str, result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Every number an audit measured (estimates with their interval bounds) and every check's value."""
    rows: list[tuple[str, float, int]] = []

    def walk(value: Any, path: list[str]) -> None:
        if _is_estimate(value):
            for field, suffix in (("value", None), ("ci_lower", "ci_lower"), ("ci_upper", "ci_upper")):
                number = _number(value.get(field))
                if number is not None:
                    rows.append((metric_key("audit", name, *path, *([suffix] if suffix else [])), number, 0))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, [*path, key])
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):  # per-group / per-class rows, named by their own label
                label = item.get("group") or item.get("label") or item.get("name") or index
                walk({k: v for k, v in item.items() if k not in ("group", "label", "name")}, [*path, label])
        else:
            number = _number(value)
            if number is not None:
                rows.append((metric_key("audit", name, *path), number, 0))

    walk(result.get("metrics") or {}, [])
    for check in result.get("checks") or []:
        number = _number(check.get("actual"))
        if number is not None:
            rows.append((metric_key("check", name, check.get("name")), number, 0))
        interval = check.get("interval") or []
        for bound, suffix in zip(interval, ("ci_lower", "ci_upper")):
            if _number(bound) is not None:
                rows.append((metric_key("check", name, check.get("name"), suffix), float(bound), 0))
    return rows


def run_tags(run_dir: Path) -> dict[str, str]:
    """The verdict, policy, model, data and privacy facts as tags (what a registry or a reviewer filters by)."""
    verdict = _read_json(run_dir / VERDICT_FILE) or {}
    data = _read_json(run_dir / DATA_FILE) or {}
    privacy = _read_json(run_dir / PRIVACY_FILE) or {}
    tags = {
        RUN_ID_TAG: run_dir.name,
        "secure_ft.verdict": verdict.get("outcome") or ("passed" if verdict.get("passed") else
                                                        "blocked" if verdict else "not audited"),
        "secure_ft.policy_name": verdict.get("policy_name"),
        "secure_ft.policy_sha256": verdict.get("policy_sha256"),
        "secure_ft.model_sha256": verdict.get("model_sha256"),
        "secure_ft.data_fingerprint": data.get("fingerprint"),
        "secure_ft.epsilon": privacy.get("epsilon"),
        "secure_ft.delta": privacy.get("delta"),
        "secure_ft.dp": "true" if privacy else "false",
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def collect_metrics(run_dir: Path) -> list[tuple[str, float, int]]:
    """All metrics of a finished run directory (see the module docstring for the keys)."""
    rows = training_metrics(_read_json(run_dir / METRICS_FILE))
    privacy = _read_json(run_dir / PRIVACY_FILE) or {}
    rows += privacy_metrics(privacy)
    # federated: each site's sample-level guarantee and the central client-level one, as privacy.json states them
    sites = {name: record for name, record in (privacy.get("sites") or {}).items() if isinstance(record, dict)}
    folder = run_dir / SITES_DIR
    if folder.is_dir():
        for site in sorted(path for path in folder.iterdir() if path.is_dir() and path.name not in sites):
            sites[site.name] = _read_json(site / PRIVACY_FILE) or {}
    for name, record in sorted(sites.items()):
        rows += privacy_metrics(record, metric_key("privacy", "site", name))
    if isinstance(privacy.get("central"), dict):
        rows += privacy_metrics(privacy["central"], "privacy.central")
    audits = run_dir / AUDITS_DIR
    if audits.is_dir():
        for path in sorted(audits.glob("*.json")):
            rows += audit_metrics(path.stem, _read_json(path) or {})
    return rows


# -- upload -----------------------------------------------------------------------------------


def sync_run(run_dir: str | os.PathLike[str], uri: str | None = None, experiment: str | None = None,
             run_name: str | None = None) -> SyncResult:
    """Upload a finished run directory as one MLflow run (or find the one uploaded before).

    Parameters
    ----------
    run_dir
        A run directory (``config.yaml`` at least; metrics, audits, verdict and report when present).
    uri, experiment, run_name
        Default: the run config's ``tracking.mlflow`` values, the URI then ``$MLFLOW_TRACKING_URI``.

    Raises
    ------
    ConfigError
        No tracking URI anywhere, or mlflow is not installed.
    TrackingError
        The server does not answer or refuses the upload (the MLflow run, if begun, is marked FAILED).
    """
    from secure_ft.records.run_directory import RunDirectory

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    settings = RunDirectory(run_dir).read_config().tracking.mlflow
    uri = resolve_tracking_uri(uri or settings.uri)
    if not uri:
        raise ConfigError(f"{run_dir}: no MLflow tracking URI: pass --uri, set tracking.mlflow.uri in the run "
                          f"config or ${TRACKING_URI_ENV}")
    experiment = experiment or settings.experiment
    run_name = run_name or settings.run_name or run_dir.name
    mlflow_module()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with quick_failure():
        probe_server(uri)
        client = MlflowClient(tracking_uri=uri)
        try:
            experiment_id = _experiment_id(client, experiment)
            found = client.search_runs([experiment_id], filter_string=(
                f"tags.`{RUN_ID_TAG}` = '{run_dir.name}' and tags.`{COMPLETE_TAG}` = 'true'"), max_results=1)
            if found:
                return SyncResult(found[0].info.run_id, experiment_id, redact_uri(uri), already_synced=True)
            started, finished = run_period(run_dir)
            run = client.create_run(experiment_id, start_time=started, run_name=run_name, tags=run_tags(run_dir))
        except MlflowException as error:
            raise TrackingError(f"MLflow at {redact_uri(uri)} refused the run: {error.message}") from None
        run_id = run.info.run_id
        try:
            config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
            flat = flatten_params(config)
            if flat.get("tracking.mlflow.uri") not in (None, "null"):  # a password in the URI stays out of MLflow
                flat["tracking.mlflow.uri"] = redact_uri(flat["tracking.mlflow.uri"])
            params = [Param(key, value) for key, value in flat.items()]
            for start in range(0, len(params), PARAMS_PER_BATCH):
                client.log_batch(run_id, params=params[start:start + PARAMS_PER_BATCH])
            stamp = finished or started or 0
            metrics = [Metric(key, value, stamp, step) for key, value, step in collect_metrics(run_dir)]
            for start in range(0, len(metrics), METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])
            artifacts = [name for name in ARTIFACT_FILES if (run_dir / name).is_file()]
            for name in artifacts:
                client.log_artifact(run_id, str(run_dir / name))
            client.log_batch(run_id, tags=[RunTag(COMPLETE_TAG, "true")])
            client.set_terminated(run_id, "FINISHED", end_time=finished)
        except BaseException as error:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            if isinstance(error, MlflowException):
                raise TrackingError(f"MLflow at {redact_uri(uri)} refused part of run {run_id}: {error.message}; "
                                    "retry with `secure-ft mlflow sync RUN_DIR`") from None
            if isinstance(error, OSError):
                raise TrackingError(f"uploading to MLflow at {redact_uri(uri)} failed: {error}; retry with "
                                    "`secure-ft mlflow sync RUN_DIR`") from None
            raise
    return SyncResult(run_id, experiment_id, redact_uri(uri), already_synced=False, params=len(params),
                      metrics=len(metrics), artifacts=len(artifacts))


def run_period(run_dir: Path) -> tuple[int | None, int | None]:
    """When the run began and last recorded a step (ms since the epoch), from its ledger's first and last lines.

    MLflow then shows when the run happened, not when it was uploaded (a later sync included).
    """
    from datetime import datetime

    stamps = []
    for entry in Ledger(run_dir).events():
        if str(entry.get("event", "")).startswith("mlflow_"):
            continue  # the uploads themselves are not part of the run
        try:
            stamps.append(int(datetime.fromisoformat(entry["timestamp"]).timestamp() * 1000))
        except (KeyError, TypeError, ValueError):
            continue
    return (stamps[0], stamps[-1]) if stamps else (None, None)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or choose another "
                                "tracking.mlflow.experiment")
        return experiment.experiment_id
    return client.create_experiment(name)


def track_finished_run(run_dir: str | os.PathLike[str], uri: str | None = None) -> SyncResult | None:
    """The end-of-run hook: upload, record the outcome in the ledger, and never fail the run.

    Returns None when tracking is off or the upload failed (one warning, and an
    ``mlflow_sync_failed`` ledger event saying how to upload later).
    """
    from secure_ft.records.run_directory import RunDirectory

    run_dir = Path(run_dir)
    settings = RunDirectory(run_dir).read_config().tracking.mlflow
    uri = resolve_tracking_uri(uri or settings.uri)
    if not uri:
        return None
    ledger = Ledger(run_dir)
    try:
        result = sync_run(run_dir, uri)
    except Exception as error:  # noqa: BLE001 (tracking is a view: whatever broke, the run stands)
        reason = str(error) if isinstance(error, SecureFTError) else f"{type(error).__name__}: {error}"
        log.warning("MLflow tracking failed, the run is complete without it: %s. Upload it later with "
                    "`secure-ft mlflow sync %s`", reason, run_dir)
        with contextlib.suppress(SecureFTError):
            ledger.append("mlflow_sync_failed", tracking_uri=redact_uri(uri), reason=reason)
        return None
    record_sync(ledger, result)
    log.info("MLflow: run %s in experiment %s at %s", result.run_id, result.experiment_id, result.tracking_uri)
    return result


def record_sync(ledger: Ledger, result: SyncResult) -> None:
    """The ledger's line for an upload (nothing for a run uploaded before)."""
    if not result.already_synced:
        ledger.append("mlflow_synced", tracking_uri=result.tracking_uri, experiment_id=result.experiment_id,
                      mlflow_run_id=result.run_id, params=result.params, metrics=result.metrics,
                      artifacts=result.artifacts)
