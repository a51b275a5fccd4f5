"""Export: a signed bundle that lets a model leave the platform only with its evidence.

``export_bundle`` refuses (:class:`~secure_ft.errors.ExportRefused`) unless the run directory
holds a passing verdict for the model's *current* SHA-256: a model edited after its audit
cannot be exported. The bundle it writes::

    BUNDLE/
      model/                 save_pretrained folder (safetensors) + tokenizer
      README.md              Hugging Face model card
      audit_report.json      the compliance report (versioned schema) ...
      audit_report.html      ... and its self-contained HTML rendering
      policy.yaml            the policy the verdict was reached under
      verdict.json           the passing verdict
      ledger.jsonl           the run ledger up to the export
      signing_key.pub        Ed25519 public key of the signer
      audits/...             adversarial evidence, only with export.include_evidence
      manifest.json          SHA-256 and size of every file above, plus metadata
      manifest.sig           Ed25519 signature of manifest.json's bytes

The bundle is assembled in a temporary folder beside the target and renamed into place when
complete, so a crash never leaves a half-written bundle under the target name.

``verify_bundle`` checks the signature, then every file's hash, that no file is missing or
extra, and that the model, verdict and manifest agree. Passing the signer's public key
(``--public-key``) proves who exported the bundle; without it, the bundle's own key proves
only that nothing changed since signing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from audits.gate import Verdict
from secure_ft import signing
from secure_ft.config import RunConfig, load_config
from secure_ft.errors import BundleError, ConfigError, ExportRefused, SecureFTError
from secure_ft.run_directory import CONFIG_FILE, MODEL_DIR, POLICY_FILE, REPORT_HTML_FILE, REPORT_JSON_FILE, RUN_LEDGER_FILE, VERDICT_FILE
from secure_ft.run_ledger import Ledger, verify_ledger
from secure_ft.model_card import render_model_card
from secure_ft.models import check_model_folder, file_sha256, model_hash
from secure_ft.policy import default_policy_path
from secure_ft.signing import keygen  # re-exported: `secure-ft keygen`

__all__ = ["export_bundle", "verify_bundle", "keygen", "BundleVerification", "SIGNING_KEY_ENV"]

log = logging.getLogger(__name__)

SIGNING_KEY_ENV = "SECURE_FT_SIGNING_KEY"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PUBLIC_KEY_FILE = "signing_key.pub"
MANIFEST_FORMAT = "secure-ft-bundle"
MANIFEST_VERSION = 1
REPORT_FILES = (REPORT_JSON_FILE, REPORT_HTML_FILE)
RUN_LOCAL_KEY_PREFIX = Path("signing") / "run-local"
_UNSIGNED = (MANIFEST_FILE, SIGNATURE_FILE)


@dataclass
class BundleVerification:
    """What `verify_bundle` established about a bundle."""

    bundle_dir: Path
    files: int  # files checked against the manifest
    model_sha256: str
    policy_name: str
    public_key_sha256: str
    trusted_key: bool  # True when the caller supplied the public key; False: the bundle's own key


# -- export -------------------------------------------------------------------------------


def export_bundle(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  signing_key: str | os.PathLike[str] | None = None) -> Path:
    """Write a signed export bundle of a run whose current model holds a passing verdict.

    Parameters
    ----------
    run_dir
        Run directory with ``model/``, ``verdict.json``, ``audit_report.json`` / ``.html``,
        ``ledger.jsonl`` and ``config.yaml``.
    out_dir
        Bundle folder to create; it must not exist yet.
    signing_key
        Ed25519 private key (PEM). Default: ``export.signing_key`` of the run config, then the
        ``SECURE_FT_SIGNING_KEY`` environment variable, then a run-local key pair generated
        in ``run_dir/signing/`` (logged as a warning: it proves integrity, not origin).

    Returns
    -------
    Path
        The bundle folder.

    Raises
    ------
    ExportRefused
        No passing verdict for the current model hash, or evidence that no longer matches.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run directory not found")
    if out_dir.exists():
        raise ConfigError(f"{out_dir}: already exists; choose a new --out folder (bundles are never overwritten)")
    ledger = Ledger(run_dir)
    try:
        verify_ledger(run_dir)
    except BundleError as error:
        raise ExportRefused(f"the run ledger does not verify, so the run's evidence cannot be trusted: {error}") from None
    try:
        config = _run_config(run_dir)
        verdict = _passing_verdict(run_dir)
        policy_bytes = _verdict_policy(run_dir, config, verdict)
        report = _matching_report(run_dir, verdict)
    except ExportRefused as error:
        ledger.append("export_refused", reasons=str(error).splitlines())
        raise
    key, key_source = _resolve_signing_key(run_dir, config, signing_key)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        _copy_model(run_dir / MODEL_DIR, temp / MODEL_DIR, verdict.model_sha256)
        for name in REPORT_FILES:
            shutil.copy2(run_dir / name, temp / name)
        (temp / POLICY_FILE).write_bytes(policy_bytes)
        shutil.copy2(run_dir / VERDICT_FILE, temp / VERDICT_FILE)
        shutil.copy2(run_dir / RUN_LEDGER_FILE, temp / RUN_LEDGER_FILE)
        if config.export.include_evidence:
            _copy_evidence(run_dir, temp, report)
        (temp / "README.md").write_text(render_model_card(report), encoding="utf-8")
        (temp / PUBLIC_KEY_FILE).write_bytes(signing.public_key_pem(key.public_key()))
        lines, head = ledger.head()
        manifest = _manifest(temp, verdict, report, key, key_source, lines, head)
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
        (temp / MANIFEST_FILE).write_bytes(manifest_bytes)
        (temp / SIGNATURE_FILE).write_bytes(signing.sign(key, manifest_bytes))
        _fsync_tree(temp)
        verify_bundle(temp, key.public_key())  # never hand out a bundle that does not verify
        os.replace(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    ledger.append("export", bundle=str(out_dir), model_sha256=verdict.model_sha256,
                  manifest_sha256=file_sha256(out_dir / MANIFEST_FILE),
                  public_key_sha256=signing.public_key_fingerprint(key.public_key()), key_source=key_source)
    log.info("exported %s (signed with %s)", out_dir, key_source)
    return out_dir


def _run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ExportRefused(f"{path}: missing; the run directory is incomplete, so it cannot be exported")
    try:
        return load_config(path)
    except ConfigError as error:
        raise ExportRefused(f"{path}: the saved run config is unreadable: {error}") from None


def _passing_verdict(run_dir: Path) -> Verdict:
    path = run_dir / VERDICT_FILE
    if not path.is_file():
        raise ExportRefused(f"{path}: no verdict; run the audits and the gate first (`secure-ft run`)")
    try:
        verdict = Verdict.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise ExportRefused(f"{path}: unreadable verdict ({error}); rerun the audits") from None
    if not verdict.passed:
        reasons = "\n".join(f"  - {reason}" for reason in verdict.reasons) or "  - (no reasons recorded)"
        raise ExportRefused(f"the gate blocked export under policy {verdict.policy_name!r}:\n{reasons}")
    model_dir = run_dir / MODEL_DIR
    try:
        check_model_folder(model_dir)
        current = model_hash(model_dir)
    except (SecureFTError, OSError) as error:
        raise ExportRefused(f"{model_dir}: the audited model is missing or unreadable: {error}") from None
    if current != verdict.model_sha256:
        raise ExportRefused(
            f"{model_dir}: the model changed after its audit (SHA-256 now {current[:16]}…, audited "
            f"{verdict.model_sha256[:16]}…); rerun the audits on this model before exporting"
        )
    return verdict


def _verdict_policy(run_dir: Path, config: RunConfig, verdict: Verdict) -> bytes:
    """Bytes of the policy file the verdict names (by SHA-256)."""
    candidates = [run_dir / POLICY_FILE]
    if config.policy:
        candidates.append(Path(config.resolve_path(config.policy)))
    candidates.append(default_policy_path())
    for path in candidates:
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == verdict.policy_sha256:
                return data
    shown = ", ".join(str(path) for path in candidates)
    raise ExportRefused(
        f"no policy file with the verdict's SHA-256 {verdict.policy_sha256[:16]}… was found (looked at {shown}); "
        "the policy changed after the verdict: rerun the gate"
    )


def _matching_report(run_dir: Path, verdict: Verdict) -> dict[str, Any]:
    for name in REPORT_FILES:
        if not (run_dir / name).is_file():
            raise ExportRefused(f"{run_dir / name}: missing; write the report before exporting (`secure-ft run` does)")
    try:
        report = json.loads((run_dir / REPORT_FILES[0]).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ExportRefused(f"{run_dir / REPORT_FILES[0]}: unreadable ({error}); rewrite the report") from None
    reported = report.get("verdict") or {}
    if reported.get("model_sha256") != verdict.model_sha256 or reported.get("timestamp") != verdict.timestamp:
        raise ExportRefused(
            f"{run_dir / REPORT_FILES[0]}: describes another verdict than {run_dir / VERDICT_FILE}; rewrite the report"
        )
    return report


def _resolve_signing_key(run_dir: Path, config: RunConfig, signing_key) -> tuple[Any, str]:
    """The private key and a description of where it came from."""
    if signing_key is not None:
        return signing.load_private_key(signing_key), f"key file {signing_key}"
    if config.export.signing_key:
        path = config.resolve_path(config.export.signing_key)
        return signing.load_private_key(path), f"export.signing_key {path}"
    if os.environ.get(SIGNING_KEY_ENV):
        path = os.environ[SIGNING_KEY_ENV]
        return signing.load_private_key(path), f"${SIGNING_KEY_ENV} {path}"
    private_path, public_path = signing.key_pair_paths(run_dir / RUN_LOCAL_KEY_PREFIX)
    if not private_path.exists():
        signing.keygen(run_dir / RUN_LOCAL_KEY_PREFIX)
    log.warning(
        "no signing key configured (export.signing_key, $%s): signed with the run-local key %s; this proves the "
        "bundle is unchanged but not who exported it; distribute %s to verifiers or configure an organisation key",
        SIGNING_KEY_ENV, private_path, public_path,
    )
    return signing.load_private_key(private_path), f"run-local key {private_path}"


def _copy_model(source: Path, target: Path, expected_sha256: str) -> None:
    shutil.copytree(source, target, symlinks=False)
    if model_hash(target) != expected_sha256:  # changed while copying
        raise ExportRefused(f"{source}: the model changed during export; rerun the audits and export again")


def _copy_evidence(run_dir: Path, target: Path, report: dict[str, Any]) -> None:
    root = run_dir.resolve()
    for audit in (report.get("audits") or {}).values():
        for relative in audit.get("evidence") or []:
            source = (run_dir / relative).resolve()
            if root not in source.parents:
                raise ExportRefused(f"evidence path {relative!r} points outside the run directory; refusing to copy it")
            if not source.exists():
                raise ExportRefused(f"{source}: evidence listed by audit {audit.get('name')!r} is missing")
            destination = target / source.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(source, destination)


def _manifest(bundle: Path, verdict: Verdict, report: dict[str, Any], key, key_source: str,
              ledger_lines: int, ledger_head: str) -> dict[str, Any]:
    files = {
        relative: {"sha256": file_sha256(bundle / relative), "bytes": (bundle / relative).stat().st_size}
        for relative in _bundle_files(bundle)
    }
    run = report.get("run") or {}
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(),
        "secure_ft_version": _version("secure-ft"),
        "model_sha256": verdict.model_sha256,
        "data_fingerprint": (run.get("data") or {}).get("fingerprint"),
        "verdict": {"passed": verdict.passed, "policy_name": verdict.policy_name,
                    "policy_sha256": verdict.policy_sha256, "timestamp": verdict.timestamp},
        "ledger": {"lines": ledger_lines, "head_sha256": ledger_head},
        "signature": {"algorithm": signing.ALGORITHM, "file": SIGNATURE_FILE, "public_key_file": PUBLIC_KEY_FILE,
                      "public_key_sha256": signing.public_key_fingerprint(key.public_key()), "key_source": key_source},
        "files": files,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _bundle_files(bundle: Path) -> list[str]:
    """Every file under the bundle except the manifest and its signature, as sorted POSIX paths."""
    found = []
    for path in sorted(bundle.rglob("*")):
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink():
            raise BundleError(f"{bundle}: {relative} is a symbolic link; bundles hold plain files only")
        if path.is_file() and relative not in _UNSIGNED:
            found.append(relative)
    return found


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())


# -- verify -------------------------------------------------------------------------------


def verify_bundle(bundle_dir: str | os.PathLike[str], public_key=None) -> BundleVerification:
    """Check a bundle's signature, every file hash, and that nothing is missing or extra.

    Parameters
    ----------
    bundle_dir
        The bundle folder.
    public_key
        The signer's public key (path to a PEM file, or an ``Ed25519PublicKey``). Default: the
        key inside the bundle, which proves integrity but not origin.

    Raises
    ------
    BundleError
        Naming the first file that differs (or the manifest / signature).
    """
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: bundle folder not found")
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle / name}: missing; this is not a complete secure-ft bundle")
    manifest_bytes = (bundle / MANIFEST_FILE).read_bytes()
    trusted = public_key is not None
    if public_key is None:
        if not (bundle / PUBLIC_KEY_FILE).is_file():
            raise BundleError(f"{bundle / PUBLIC_KEY_FILE}: missing; pass the signer's public key with --public-key")
        key = signing.public_key_from_pem((bundle / PUBLIC_KEY_FILE).read_bytes(), str(bundle / PUBLIC_KEY_FILE))
    elif isinstance(public_key, (str, os.PathLike)):
        key = signing.load_public_key(public_key)
    else:
        key = public_key
    signing.verify_signature(key, manifest_bytes, (bundle / SIGNATURE_FILE).read_bytes(),
                             f"{bundle / MANIFEST_FILE} (signature {SIGNATURE_FILE})")
    manifest = _parse_manifest(bundle, manifest_bytes)

    listed: dict[str, dict[str, Any]] = manifest["files"]
    for relative in sorted(listed):
        path = bundle / relative
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{path}: listed in the manifest but missing from the bundle")
        entry = listed[relative]
        if path.stat().st_size != entry.get("bytes") or file_sha256(path) != entry.get("sha256"):
            raise BundleError(f"{path}: differs from the manifest (SHA-256 mismatch); the file was changed after export")
    extra = [relative for relative in _bundle_files(bundle) if relative not in listed]
    if extra:
        raise BundleError(f"{bundle / extra[0]}: not listed in the manifest; the file was added after export")

    if manifest["signature"].get("public_key_sha256") != signing.public_key_fingerprint(key) and not trusted:
        raise BundleError(f"{bundle / PUBLIC_KEY_FILE}: is not the key the manifest names")
    _check_consistency(bundle, manifest)
    return BundleVerification(
        bundle_dir=bundle, files=len(listed), model_sha256=manifest["model_sha256"],
        policy_name=manifest["verdict"].get("policy_name", ""),
        public_key_sha256=signing.public_key_fingerprint(key), trusted_key=trusted,
    )


def _parse_manifest(bundle: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{bundle / MANIFEST_FILE}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{bundle / MANIFEST_FILE}: not a secure-ft bundle manifest")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise BundleError(
            f"{bundle / MANIFEST_FILE}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this secure-ft reads {MANIFEST_VERSION}); use a matching secure-ft version"
        )
    for key in ("files", "model_sha256", "verdict", "signature"):
        if not isinstance(manifest.get(key), (dict, str)):
            raise BundleError(f"{bundle / MANIFEST_FILE}: missing field {key!r}")
    return manifest


def _check_consistency(bundle: Path, manifest: dict[str, Any]) -> None:
    """The model, the verdict and the manifest must describe the same model and decision."""
    current = model_hash(bundle / MODEL_DIR)
    if current != manifest["model_sha256"]:
        raise BundleError(f"{bundle / 'model'}: model SHA-256 {current[:16]}… is not the one the manifest names")
    try:
        verdict = Verdict.from_dict(json.loads((bundle / VERDICT_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise BundleError(f"{bundle / VERDICT_FILE}: unreadable ({error})") from None
    if not verdict.passed or verdict.model_sha256 != current:
        raise BundleError(f"{bundle / VERDICT_FILE}: is not a passing verdict for the bundled model")
    ledger = manifest.get("ledger") or {}
    if ledger.get("lines") is not None:
        verify_ledger(bundle, ledger["lines"], ledger.get("head_sha256"))
