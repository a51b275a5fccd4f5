"""An MLflow model registry that only ever receives gated models, and checks what it hands back.

:func:`register_bundle` reads a signed bundle once, verifies those bytes (the OpenSSF signature
by a trusted key over every file, and the gate's signed verdict, which must have passed) and
only then logs exactly those bytes as the artifact of an MLflow pyfunc model
(`secure_ft.serving.mlflow_pyfunc`) and registers it as a new version, tagged with what the signed
verdict says: outcome, policy name and digest, ε and δ, signer key fingerprint, model digest
and bundle digest (the SHA-256 of ``bundle.sig``, whose signature covers every other file).
A blocked run never has a bundle, and an unverifiable bundle is refused (exit 4).

:func:`verify_registered` downloads a version's artifacts and verifies the bundle inside like a
folder, so a file replaced in the registry's artifact store fails, and checks that the
version's bundle-digest tag names the bundle found.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from secure_ft.errors import BundleError, ConfigError, ExportRefused
from secure_ft.pipeline.mlflow_tracking import (RUN_ID_TAG, TRACKING_URI_ENV, TrackingError, mlflow_module,
                                                probe_server, quick_failure, redact_uri, resolve_tracking_uri)
from secure_ft.records.bundle_snapshot import read_bundle_snapshot
from secure_ft.records.run_directory import PRIVACY_FILE, REPORT_JSON_FILE
from secure_ft.release.export import SIGNATURE_FILE, BundleVerification, verify_snapshot

REGISTRY_SCHEME = "models:/"
BUNDLE_DIGEST_TAG = "secure_ft.bundle_sha256"
MLMODEL_FILE = "MLmodel"


@dataclass(frozen=True)
class Registration:
    """A registered model version."""

    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    tags: dict[str, str]


def is_registry_uri(text: str) -> bool:
    return str(text).startswith(REGISTRY_SCHEME)


def _bundle_digest(signature: bytes) -> str:
    return hashlib.sha256(signature).hexdigest()


def registry_tags(snapshot, verification: BundleVerification) -> dict[str, str]:
    """Tags of a version, all read from the verified bytes (never from the folder again)."""
    report = json.loads(snapshot.read(REPORT_JSON_FILE).decode("utf-8"))
    verdict = report.get("verdict") or {}
    privacy = json.loads(snapshot.files[PRIVACY_FILE].decode("utf-8")) if PRIVACY_FILE in snapshot.files else {}
    tags = {
        "secure_ft.verdict": verification.outcome,
        "secure_ft.policy_name": verification.policy_name,
        "secure_ft.policy_sha256": verdict.get("policy_sha256"),
        "secure_ft.model_sha256": verification.model_sha256,
        "secure_ft.epsilon": privacy.get("epsilon"),
        "secure_ft.delta": privacy.get("delta"),
        "secure_ft.dp": "true" if privacy else "false",
        "secure_ft.signer_sha256": verification.public_key_sha256,
        BUNDLE_DIGEST_TAG: _bundle_digest(snapshot.read(SIGNATURE_FILE)),
    }
    approvals = report.get("approvals")
    if approvals:
        tags["secure_ft.release.approvals"] = json.dumps(approvals, ensure_ascii=False)[:5000]
    return {key: str(value) for key, value in tags.items() if value is not None}


@contextlib.contextmanager
def _tracking(uri: str):
    """MLflow's fluent API pointed at `uri` for the block, then back (the process may use MLflow itself)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with quick_failure(), _use_tracking_uri(uri):
        yield


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _requirements() -> list[str]:
    # stated, not inferred: inference would import and run the model in a subprocess at logging time
    pins = []
    for package in ("secure-ft", "mlflow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{package}=={metadata.version(package)}")
    return pins


def register_bundle(bundle_dir: str | os.PathLike[str], name: str, uri: str | None = None, *,
                    public_key: str | os.PathLike[str] | None = None, trusted_keys: list | None = None,
                    run_dir_name: str | None = None, release_policy: str | os.PathLike[str] | None = None,
                    org_root_pub: str | os.PathLike[str] | None = None) -> Registration:
    """Verify a signed bundle and register exactly the verified bytes as a new version of `name`.

    Parameters
    ----------
    bundle_dir
        A bundle written by ``secure-ft export`` (or ``secure-ft run``).
    name
        Registered model name (created when new).
    uri
        Tracking / registry URI; default ``$MLFLOW_TRACKING_URI``.
    public_key, trusted_keys
        Who may have signed the bundle (default: the trust list); a self-signed bundle is refused.
    run_dir_name
        The run directory's name: the version is logged into the MLflow run tracked for it, if any.
    release_policy, org_root_pub
        The organisation's release policy and root key (default: resolved as ``export`` does);
        with one applied, a ``needs_review`` verdict its approvals released is registered too.

    Raises
    ------
    BundleError
        The bundle does not verify (exit 4).
    ExportRefused
        Its signed verdict did not pass (exit 3).
    TrackingError
        MLflow does not answer or refuses the registration.
    """
    uri = resolve_tracking_uri(uri)
    if not uri:
        raise ConfigError(f"registering {name!r} needs an MLflow registry: pass --tracking-uri, set "
                          f"tracking.mlflow.uri in the run config or ${TRACKING_URI_ENV}")
    mlflow = mlflow_module()
    snapshot = read_bundle_snapshot(bundle_dir)
    verification = verify_snapshot(snapshot, public_key, trusted_keys=trusted_keys, release_policy=release_policy,
                                   org_root_pub=org_root_pub)
    released = verification.release is not None and verification.release.release is not None
    if verification.outcome != "passed" and not released:
        raise ExportRefused(f"{bundle_dir}: its signed verdict is {verification.outcome}; only a passed model "
                            "(or one a release policy's approvals released) is registered")
    tags = registry_tags(snapshot, verification)
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    from secure_ft.serving.mlflow_pyfunc import BUNDLE_ARTIFACT, BundleModel

    labels = json.loads(snapshot.read("model/config.json").decode("utf-8")).get("id2label") or {}
    signature = ModelSignature(inputs=Schema([ColSpec("string")]),
                               outputs=Schema([ColSpec("string", "label"), ColSpec(Array("double"), "probabilities")]))
    probe_server(uri)
    with _tracking(uri), tempfile.TemporaryDirectory(prefix="secure-ft-register-") as scratch:
        # the artifact is written from the verified bytes, into a folder named as the artifact key
        with snapshot.private_copy() as copy:
            staged = Path(scratch, BUNDLE_ARTIFACT)
            _copy_tree(copy, staged)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            try:
                run_id = _tracked_run(client, run_dir_name)
                # logging into the tracked run reopens it; its end stays the run's own (the ledger's), not now
                ended = client.get_run(run_id).info.end_time if run_id else None
                with (mlflow.start_run(run_id=run_id) if run_id else contextlib.nullcontext()), \
                        warnings.catch_warnings(), contextlib.ExitStack() as stack:
                    # MLflow's hints (type hints, input example) do not apply: the signature is stated here
                    warnings.filterwarnings("ignore", category=UserWarning)
                    # its caution about pickled models: this one pickles a reference to BundleModel, and the
                    # bundle it loads is verified before use (README, MLflow section, on what that covers)
                    stack.enter_context(_quiet_logger("mlflow.pyfunc"))
                    info = mlflow.pyfunc.log_model(
                        name="model", python_model=BundleModel(), artifacts={BUNDLE_ARTIFACT: str(staged)},
                        signature=signature, pip_requirements=_requirements(),
                        metadata={"secure_ft": {"labels": [labels[key] for key in sorted(labels, key=int)],
                                                "model_sha256": verification.model_sha256,
                                                BUNDLE_DIGEST_TAG: tags[BUNDLE_DIGEST_TAG]}})
                if run_id:
                    client.set_terminated(run_id, "FINISHED", end_time=ended)
                with contextlib.suppress(MlflowException):
                    client.create_registered_model(name)
                version = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=tags,
                                                      description=_description(tags), model_id=info.model_id)
            except MlflowException as error:
                raise TrackingError(f"MLflow at {redact_uri(uri)} refused registering {name!r}: "
                                    f"{error.message}") from None
            except OSError as error:
                raise TrackingError(f"registering {name!r} at {redact_uri(uri)} failed: {error}") from None
    return Registration(name, str(version.version), f"{REGISTRY_SCHEME}{name}/{version.version}", tags)


def record_registration(run_dir: str | os.PathLike[str], registration: Registration) -> None:
    """The run ledger's line for a registration: which version holds which bundle."""
    from secure_ft.records.run_ledger import Ledger

    Ledger(run_dir).append("mlflow_registered", model_uri=registration.model_uri,
                           bundle_sha256=registration.tags[BUNDLE_DIGEST_TAG],
                           model_sha256=registration.tags["secure_ft.model_sha256"])


def register_after_run(run_dir: Path, bundle: Path, name: str, uri: str | None, *,
                       trusted_keys: list | None = None) -> Registration | None:
    """``tracking.mlflow.register`` at the end of ``secure-ft run``: a failure is warned about and put in the
    ledger, never raised (the bundle stands; ``secure-ft mlflow register BUNDLE NAME`` retries)."""
    from secure_ft.errors import SecureFTError
    from secure_ft.records.run_ledger import Ledger
    from secure_ft.release.export import trusted_keys_for

    try:
        registration = register_bundle(bundle, name, uri, trusted_keys=[*(trusted_keys or []), *trusted_keys_for(None)],
                                       run_dir_name=Path(run_dir).name)
        record_registration(run_dir, registration)
    except Exception as error:  # noqa: BLE001 (the registry is a view; the signed bundle is the result)
        reason = str(error) if isinstance(error, SecureFTError) else f"{type(error).__name__}: {error}"
        logging.getLogger(__name__).warning(
            "MLflow registration of %s failed: %s. Register it later with `secure-ft mlflow register %s %s`",
            bundle, reason, bundle, name)
        with contextlib.suppress(SecureFTError):
            Ledger(run_dir).append("mlflow_register_failed", registered_model=name, reason=reason)
        return None
    logging.getLogger(__name__).info("MLflow: registered %s", registration.model_uri)
    return registration


def _copy_tree(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target, symlinks=False)


def _tracked_run(client, run_dir_name: str | None) -> str | None:
    """The MLflow run `secure_ft.pipeline.mlflow_tracking` made for this run directory, if there is one."""
    if not run_dir_name:
        return None
    found = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        filter_string=f"tags.`{RUN_ID_TAG}` = '{run_dir_name}' and tags.`secure_ft.sync_complete` = 'true'",
        max_results=1)
    return found[0].info.run_id if found else None


def _description(tags: dict[str, str]) -> str:
    privacy = (f"ε = {tags['secure_ft.epsilon']}, δ = {tags['secure_ft.delta']}" if "secure_ft.epsilon" in tags
               else "no differential privacy")
    return (f"secure-ft signed bundle; gate verdict {tags['secure_ft.verdict']} under policy "
            f"{tags['secure_ft.policy_name']!r}; {privacy}. Check it with `secure-ft verify models:/NAME/VERSION`.")


@dataclass(frozen=True)
class RegisteredVerification:
    model_uri: str
    bundle: BundleVerification
    tags: dict[str, str]


def verify_registered(model_uri: str, uri: str | None = None, *, public_key: str | os.PathLike[str] | None = None,
                      allow_self_signed: bool = False, release_policy: str | os.PathLike[str] | None = None,
                      org_root_pub: str | os.PathLike[str] | None = None) -> RegisteredVerification:
    """Download a registered version's artifacts and verify its bundle as ``secure-ft verify BUNDLE`` does.

    Raises
    ------
    BundleError
        A file of the bundle was replaced, added or removed in the registry, no trusted key
        signed it, or the version's bundle-digest tag names another bundle (exit 4).
    """
    uri = resolve_tracking_uri(uri)
    if not uri:
        raise ConfigError(f"{model_uri}: needs an MLflow registry: pass --tracking-uri or set ${TRACKING_URI_ENV}")
    mlflow_module()
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, _, version = model_uri[len(REGISTRY_SCHEME):].rpartition("/")
    if not name or not version:
        raise ConfigError(f"{model_uri}: a registry URI is models:/NAME/VERSION")
    probe_server(uri)
    with _tracking(uri), tempfile.TemporaryDirectory(prefix="secure-ft-registry-") as scratch:
        try:
            tags = dict(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, version).tags)
            local = Path(download_artifacts(artifact_uri=model_uri, dst_path=scratch, tracking_uri=uri))
        except MlflowException as error:
            raise ConfigError(f"{model_uri}: not found at {redact_uri(uri)} ({error.message})") from None
        bundle = _bundle_folder(local, model_uri)
        check_wrapper(local, model_uri)
        snapshot = read_bundle_snapshot(bundle)
        try:
            result = verify_snapshot(snapshot, public_key, allow_self_signed=allow_self_signed,
                                     release_policy=release_policy, org_root_pub=org_root_pub)
        except BundleError as error:
            raise BundleError(str(error).replace(str(bundle), f"{model_uri} (bundle)")) from None
        found = _bundle_digest(snapshot.read(SIGNATURE_FILE))
        if tags.get(BUNDLE_DIGEST_TAG) != found:
            raise BundleError(f"{model_uri}: its tag {BUNDLE_DIGEST_TAG} is {tags.get(BUNDLE_DIGEST_TAG)!r} but the "
                              f"bundle in its artifacts has digest {found}; the version's files were replaced")
        result.bundle_dir = Path(model_uri)
    return RegisteredVerification(model_uri, result, tags)


def _bundle_folder(local: Path, model_uri: str) -> Path:
    """The bundle inside a downloaded pyfunc model, found through its MLmodel file."""
    from secure_ft.serving.mlflow_pyfunc import BUNDLE_ARTIFACT

    try:
        spec: Any = yaml.safe_load((local / MLMODEL_FILE).read_text(encoding="utf-8"))
        relative = spec["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise BundleError(f"{model_uri}: not a secure-ft model (its MLmodel names no {BUNDLE_ARTIFACT!r} "
                          "artifact); register bundles with `secure-ft export … --register NAME`") from None
    bundle = (local / relative).resolve()
    if local.resolve() not in bundle.parents:
        raise BundleError(f"{model_uri}: its MLmodel points the bundle outside the model ({relative!r})")
    return bundle


#: what a secure-ft model holds beside its bundle: MLflow's description of it and the pickled wrapper
# (registered_model_meta: written by MLflow when it downloads a registered version)
WRAPPER_FILES = {MLMODEL_FILE, "python_model.pkl", "conda.yaml", "python_env.yaml", "requirements.txt",
                 "registered_model_meta"}
#: the only classes the pickled wrapper may name: a reference to BundleModel (and MLflow's empty type hints)
WRAPPER_GLOBALS = {("secure_ft.serving.mlflow_pyfunc", "BundleModel"), ("mlflow.models.signature", "_TypeHints")}
# opcodes that call arbitrary callables; the wrapper only ever needs NEWOBJ of the classes above
CALLING_OPCODES = {"REDUCE", "INST", "OBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}


def check_wrapper(local: Path, model_uri: str) -> None:
    """The MLflow wrapper around the bundle (not covered by its signature) holds nothing but BundleModel.

    ``MLmodel`` must load through ``mlflow.pyfunc.model`` from ``python_model.pkl`` with no code
    folder, nothing else may sit beside the bundle, and the pickle is read as opcodes (never
    unpickled) to check that it names only `WRAPPER_GLOBALS` and calls nothing.
    """
    import pickletools

    from secure_ft.serving.mlflow_pyfunc import BUNDLE_ARTIFACT

    spec = yaml.safe_load((local / MLMODEL_FILE).read_text(encoding="utf-8"))
    flavor = (spec.get("flavors") or {}).get("python_function") or {}
    extra = sorted({path.name for path in local.iterdir()} - WRAPPER_FILES - {"artifacts"})
    artifacts = sorted(path.name for path in (local / "artifacts").iterdir()) if (local / "artifacts").is_dir() else []
    problems = []
    if flavor.get("loader_module") != "mlflow.pyfunc.model" or flavor.get("python_model") != "python_model.pkl":
        problems.append("its MLmodel loads other code than secure-ft's BundleModel")
    if flavor.get("code") or set(spec.get("flavors") or {}) != {"python_function"}:
        problems.append("its MLmodel adds a code folder or another flavour")
    if extra or artifacts != [BUNDLE_ARTIFACT]:
        problems.append(f"files beside the bundle: {', '.join(extra + [a for a in artifacts if a != BUNDLE_ARTIFACT])}")
    try:
        strings: list[Any] = []
        memo: dict[int, Any] = {}
        for opcode, argument, _ in pickletools.genops((local / "python_model.pkl").read_bytes()):
            if opcode.name in CALLING_OPCODES:
                problems.append(f"python_model.pkl calls code ({opcode.name})")
            elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(argument)
            elif opcode.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(argument)))
            elif opcode.name == "STACK_GLOBAL" and tuple(strings[-2:]) not in WRAPPER_GLOBALS:
                problems.append(f"python_model.pkl names {'.'.join(map(str, strings[-2:]))}")
            elif opcode.name == "GLOBAL" and tuple(str(argument).split(" ", 1)) not in WRAPPER_GLOBALS:
                problems.append(f"python_model.pkl names {argument}")
    except (OSError, ValueError) as error:
        problems.append(f"python_model.pkl is unreadable ({error})")
    if problems:
        raise BundleError(f"{model_uri}: the MLflow wrapper around the signed bundle was changed: "
                          f"{'; '.join(dict.fromkeys(problems))}; do not load it, register the bundle again")
