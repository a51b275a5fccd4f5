"""Export: a signed bundle that lets a model leave the platform only with its evidence.

``export_bundle`` trusts nothing in the run directory it cannot check itself. It refuses
unless the signed verdict (``verdict.dsse.json``, `secure_ft.release.verdict_attestation`) verifies
against a trusted key, names the model folder as it is now, binds the policy, the audit
results, ``privacy.json`` and the config as they are now, follows from them when the policy is
re-evaluated, and is anchored in the run ledger. A refusal because the evidence does not
check out exits 4 (`BundleError`); a verdict that checks out but did not pass exits 3
(`ExportRefused`): blocked, or needs_review (inconclusive checks a human must decide; without
an organisation release policy whose required approvers signed it off, export treats it as
blocked and lists what to review). Nothing is written either way. The bundle::

    BUNDLE/
      model/                 the model folder (safetensors, tokenizer, pooling, front end)
      verdict.dsse.json      the gate's signed verdict (in-toto Statement in a DSSE envelope)
      audits/NAME.json       the audit results the verdict was signed over
      policy.yaml            the policy the verdict was reached under
      privacy.json           the DP guarantee (DP runs)
      config.yaml            the run config
      provenance.json        what the model was built from (data, base model, packages), when the gate wrote it
      ledger.jsonl           the run ledger up to the export
      audit_report.json/.html, README.md (model card), signer.pub (a copy, never trusted)
      audits/NAME/...        adversarial evidence, only with export.include_evidence
      approvals/*.dsse.json  signed human approvals of the verdict (`secure_ft.release.approvals`), when any
      release-policy.dsse.json  the organisation's signed release policy export applied, when one was
      bundle.sig             OpenSSF model-signing signature over every other file

With a release policy configured (`secure_ft.release.release_policy`: ``--release-policy``,
``$SECURE_FT_RELEASE_POLICY`` or the config folder), export and verify also apply its rules
(`secure_ft.release.release_check`): accepted audit policies by digest, trusted and revoked gate keys,
the verdict's age and k-of-n signed approvals; a needs_review verdict is released when its
approvals rule is met. Refusals name the rule (exit 3). Verify and serve apply the verifier's
own configured release policy, never the copy inside the bundle.

``bundle.sig`` is an OpenSSF model-signing (sigstore bundle format) signature made with the
exporter's P-256 key, so ``model_signing verify key BUNDLE --signature BUNDLE/bundle.sig
--public_key KEY.pub`` checks a bundle with no secure-ft code. The bundle is assembled in a
temporary folder beside the target and renamed into place when complete.

``verify_bundle`` needs the signer's public key or a configured trust list (`secure_ft.release.keys`);
the copy inside the bundle is used only with ``allow_self_signed``, and then says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from secure_ft.errors import BundleError, ConfigError, ExportRefused
from secure_ft.records.atomic_files import sync_tree
from secure_ft.records.bundle_snapshot import BundleSnapshot, read_bundle_snapshot
from secure_ft.records.config import RunConfig, load_config
from secure_ft.records.run_directory import (APPROVALS_DIR, AUDITS_DIR, RELEASE_POLICY_FILE, CONFIG_FILE, MODEL_DIR,
                                             POLICY_FILE, PRIVACY_FILE, REPORT_HTML_FILE, REPORT_JSON_FILE,
                                             RUN_LEDGER_FILE, VERDICT_ATTESTATION_FILE, VERDICT_FILE)
from secure_ft.records.run_ledger import Ledger
from secure_ft.release.bundle_usage import bundle_facts
from secure_ft.release.keys import (SIGNING_KEY_ENV, load_public_key, public_key_fingerprint, public_key_from_pem,
                            public_key_pem, resolve_signing_key_path, load_private_key, trusted_public_keys)
from secure_ft.release.model_card import render_model_card
from secure_ft.release.openssf_signing import sign_folder, verify_folder
from secure_ft.release.release_check import ReleaseDecision, check_release
from secure_ft.release.release_policy import SignedReleasePolicy, resolve_release_policy
from secure_ft.release.verdict_attestation import AttestedVerdict, check_run_attestation, file_digest

__all__ = ["export_bundle", "verify_bundle", "verify_snapshot", "BundleVerification", "SIGNATURE_FILE", "SIGNER_KEY_FILE"]

log = logging.getLogger(__name__)

SIGNATURE_FILE = "bundle.sig"
SIGNER_KEY_FILE = "signer.pub"
MODEL_CARD_FILE = "README.md"
REPORT_FILES = (REPORT_JSON_FILE, REPORT_HTML_FILE)


@dataclass
class BundleVerification:
    """What `verify_bundle` established about a bundle."""

    bundle_dir: Path
    files: int  # files covered by the OpenSSF signature
    model_sha256: str
    policy_name: str
    public_key_sha256: str
    trusted_key: bool  # False only when the bundle's own key was accepted (allow_self_signed)
    outcome: str = "passed"  # the signed verdict's outcome (passed, or needs_review released by approvals)
    policy_sha256: str = ""
    release: ReleaseDecision | None = None  # what the release policy (or its absence) decided


class _Resolve:
    """Sentinel: resolve the release policy from the paths given, else the environment, else the config folder."""

    def __repr__(self) -> str:
        return "RESOLVE"


RESOLVE = _Resolve()


def _resolved(release, release_policy, org_root_pub) -> SignedReleasePolicy | None:
    return resolve_release_policy(release_policy, org_root_pub) if release is RESOLVE else release


def trusted_keys_for(public_key: str | os.PathLike[str] | None) -> list:
    """The keys a verdict or bundle may be signed with: the given key(s), else the user's trust list.

    An organisation key named by ``$SECURE_FT_SIGNING_KEY`` (set by whoever runs the gate,
    never read from a run directory) is trusted too.
    """
    trusted = trusted_public_keys(public_key)
    if public_key is None and os.environ.get(SIGNING_KEY_ENV):
        trusted.append(load_private_key(os.environ[SIGNING_KEY_ENV]).public_key())
    return trusted


# -- export -------------------------------------------------------------------------------


def export_bundle(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  signing_key: str | os.PathLike[str] | None = None,
                  public_key: str | os.PathLike[str] | None = None, trusted_keys: list | None = None,
                  signing_key_given_by: str = "the export's signing_key argument",
                  release_policy: str | os.PathLike[str] | None = None,
                  org_root_pub: str | os.PathLike[str] | None = None,
                  release: SignedReleasePolicy | None | _Resolve = RESOLVE) -> Path:
    """Write a signed export bundle of a run whose signed verdict passed and still holds.

    Parameters
    ----------
    run_dir
        Run directory with a signed verdict (``verdict.dsse.json``), the model, the audit
        results, the report and the ledger.
    out_dir
        Bundle folder to create; it must not exist yet.
    signing_key
        P-256 private key (PEM) that signs the bundle. Default: ``$SECURE_FT_SIGNING_KEY``,
        then the per-user default key (`secure_ft.release.keys`).
    public_key
        The gate's public key (file or folder of ``*.pub``) the verdict must be signed with.
        Default: the user's trust list (which holds the per-user default key).
    trusted_keys
        Public key objects trusted in addition (the pipeline passes the key its gate just used).
    signing_key_given_by
        Who named `signing_key`, for the ledger's and log's key provenance (a path that is the
        per-user default key or ``$SECURE_FT_SIGNING_KEY``'s is described as that instead).
    release_policy, org_root_pub
        The signed release policy and the organisation root public key it must be signed with
        (default: ``$SECURE_FT_RELEASE_POLICY`` / ``$SECURE_FT_ORG_ROOT_PUB``, then the config
        folder; none configured: no release policy applies).
    release
        An already checked release policy (or None for none), instead of resolving one.

    Raises
    ------
    BundleError
        The signed verdict does not verify or no longer matches the run directory (exit 4).
    ExportRefused
        The signed verdict checks out but the policy was not met, or the release policy's rules
        were not (exit 3).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run directory not found")
    if out_dir.is_symlink():
        raise ConfigError(f"{out_dir}: is a symbolic link{' to a missing target' if not out_dir.exists() else ''}; "
                          "choose a new --out folder that is not a link (bundles are never written through links)")
    if out_dir.exists():
        raise ConfigError(f"{out_dir}: already exists; choose a new --out folder (bundles are never overwritten)")
    _refuse_out_inside_what_export_reads(run_dir, out_dir)
    ledger = Ledger(run_dir)
    gate_keys = list(trusted_keys or []) + trusted_keys_for(public_key)
    try:
        release = _resolved(release, release_policy, org_root_pub)
        attested = check_run_attestation(run_dir, gate_keys, require_pass=False)
        decision = check_release(run_dir, attested, release)
        report = _matching_report(run_dir, attested)
    except (BundleError, ExportRefused) as error:
        _record_refusal(ledger, error)
        raise
    config = _run_config(run_dir)
    if config.export.include_evidence:  # the evidence folders are read too
        _refuse_out_inside_what_export_reads(run_dir, out_dir, _evidence_paths(report))
    key_path, key_source, _ = resolve_signing_key_path(signing_key, signing_key_given_by)
    key = load_private_key(key_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        shutil.copytree(run_dir / MODEL_DIR, temp / MODEL_DIR, symlinks=False)
        predicate = attested.statement["predicate"]
        bound = [VERDICT_ATTESTATION_FILE, VERDICT_FILE, RUN_LEDGER_FILE, *REPORT_FILES]
        bound += [entry["file"] for entry in (predicate.get("policy"), predicate.get("privacy"), predicate.get("config"),
                                              predicate.get("provenance"))
                  if entry and entry.get("sha256")]
        bound += [entry["file"] for entry in (predicate.get("audit_results") or {}).values()]
        for relative in bound:
            (temp / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / relative, temp / relative)
        if config.export.include_evidence:
            _copy_evidence(run_dir, temp, report)
        for approval in decision.approvals:  # the ones that count; a release with a stray approval is refused above
            (temp / APPROVALS_DIR).mkdir(exist_ok=True)
            shutil.copy2(run_dir / approval.file, temp / approval.file)
        if release is not None:
            # the envelope as checked, not the file again (it may have changed since)
            (temp / RELEASE_POLICY_FILE).write_text(json.dumps(release.envelope, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
        facts = bundle_facts(temp / MODEL_DIR, report, SIGNATURE_FILE, SIGNER_KEY_FILE)
        (temp / MODEL_CARD_FILE).write_text(render_model_card(report, facts, decision.summary()), encoding="utf-8")
        (temp / SIGNER_KEY_FILE).write_bytes(public_key_pem(key.public_key()))
        sign_folder(temp, key_path, temp / SIGNATURE_FILE, ignore_git_paths=False)
        sync_tree(temp)
        # never hand out one that fails; this also re-checks that the copy is what the gate signed
        verify_bundle(temp, trusted_keys=[key.public_key(), *gate_keys], release=release)
        os.replace(temp, out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    ledger.append("export", bundle=str(out_dir), model_sha256=attested.verdict.model_sha256,
                  signature_sha256=file_digest(out_dir / SIGNATURE_FILE),
                  public_key_sha256=public_key_fingerprint(key.public_key()), key_source=key_source,
                  release_policy=decision.summary())
    log.info("exported %s (signed with %s)", out_dir, key_source)
    return out_dir


def _refuse_out_inside_what_export_reads(run_dir: Path, out_dir: Path, evidence: list[str] = ()) -> None:
    """A bundle written inside the model or evidence folders would be copied into itself (and change the model)."""
    target = out_dir.parent.resolve() / out_dir.name  # resolved through existing links, as the write would go
    run = run_dir.resolve()
    read = [run / MODEL_DIR, run / AUDITS_DIR, *((run / relative).resolve() for relative in evidence)]
    for folder in read:
        if target == folder or folder in target.parents:
            raise ConfigError(f"{out_dir}: lies inside {folder}, which export reads and copies into the bundle (it "
                              "would copy the bundle into itself); choose --out outside the run's model, audits and "
                              f"evidence folders, e.g. {run.parent / (run.name + '-bundle')}")


def _record_refusal(ledger: Ledger, error: Exception) -> None:
    try:
        ledger.append("export_refused", reasons=str(error).splitlines())
    except BundleError:
        pass  # a ledger that no longer verifies is never extended; the refusal is the answer


def _run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    try:
        return load_config(path)
    except ConfigError as error:
        raise BundleError(f"{path}: the saved run config is unreadable: {error}") from None


def _matching_report(run_dir: Path, attested: AttestedVerdict) -> dict[str, Any]:
    for name in REPORT_FILES:
        if not (run_dir / name).is_file():
            raise BundleError(f"{run_dir / name}: missing; write the report before exporting (`secure-ft audit RUN_DIR` or `secure-ft run` does)")
    try:
        report = json.loads((run_dir / REPORT_FILES[0]).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{run_dir / REPORT_FILES[0]}: unreadable ({error}); rewrite the report") from None
    reported = report.get("verdict") or {}
    if reported.get("model_sha256") != attested.verdict.model_sha256 or reported.get("timestamp") != attested.verdict.timestamp:
        raise BundleError(
            f"{run_dir / REPORT_FILES[0]}: describes another verdict than {run_dir / VERDICT_FILE}; rewrite the report"
        )
    return report


def _evidence_paths(report: dict[str, Any]) -> list[str]:
    return [relative for audit in (report.get("audits") or {}).values() for relative in audit.get("evidence") or []]


def _copy_evidence(run_dir: Path, target: Path, report: dict[str, Any]) -> None:
    root = run_dir.resolve()
    for audit in (report.get("audits") or {}).values():
        for relative in audit.get("evidence") or []:
            source = (run_dir / relative).resolve()
            if root not in source.parents:
                raise BundleError(f"evidence path {relative!r} points outside the run directory; refusing to copy it")
            if not source.exists():
                raise BundleError(f"{source}: evidence listed by audit {audit.get('name')!r} is missing")
            destination = target / source.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, destination, dirs_exist_ok=True)
            else:
                shutil.copy2(source, destination)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None




# -- verify -------------------------------------------------------------------------------


def verify_bundle(bundle_dir: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None, *,
                  allow_self_signed: bool = False, trusted_keys: list | None = None,
                  release_policy: str | os.PathLike[str] | None = None, org_root_pub: str | os.PathLike[str] | None = None,
                  release: SignedReleasePolicy | None | _Resolve = RESOLVE) -> BundleVerification:
    """Check a bundle: the OpenSSF signature over every file, then the signed verdict inside it.

    The bundle is read once (`secure_ft.records.bundle_snapshot`) and those bytes are checked; use
    `verify_snapshot` directly to keep them for loading.

    Parameters
    ----------
    bundle_dir
        The bundle folder.
    public_key
        The signer's public key (a PEM file, or a folder of ``*.pub``). Default: the user's
        trust list (`secure_ft.release.keys.trusted_public_keys`).
    allow_self_signed
        Accept the public key shipped inside the bundle when no trusted key signed it. This
        proves the bundle is unchanged since signing, not who signed it.
    trusted_keys
        Public key objects to trust instead of `public_key` / the trust list (programmatic use).
    release_policy, org_root_pub, release
        The release policy to apply, as for `export_bundle`: the verifier's own, never the copy
        the bundle carries.

    Raises
    ------
    BundleError
        No trusted key signed it, or a file was changed, added (dot-files and ``.git*`` too),
        removed or linked (named), or the verdict inside does not verify or does not cover the
        bundled model and evidence.
    """
    return verify_snapshot(read_bundle_snapshot(bundle_dir), public_key, allow_self_signed=allow_self_signed,
                           trusted_keys=trusted_keys, release_policy=release_policy, org_root_pub=org_root_pub,
                           release=release)


def verify_snapshot(snapshot: BundleSnapshot, public_key: str | os.PathLike[str] | None = None, *,
                    allow_self_signed: bool = False, trusted_keys: list | None = None,
                    release_policy: str | os.PathLike[str] | None = None,
                    org_root_pub: str | os.PathLike[str] | None = None,
                    release: SignedReleasePolicy | None | _Resolve = RESOLVE) -> BundleVerification:
    """`verify_bundle` on bytes already read: what passes here is exactly what the caller holds.

    The checks run on a private copy of the snapshot (mode 0700, removed afterwards), never on
    the bundle folder, which may change at any time; messages name the bundle's paths.
    """
    bundle = snapshot.root
    release = _resolved(release, release_policy, org_root_pub)
    for name in (SIGNATURE_FILE, SIGNER_KEY_FILE, VERDICT_ATTESTATION_FILE):
        snapshot.read(name)  # BundleError naming the missing file
    shipped = public_key_from_pem(snapshot.read(SIGNER_KEY_FILE), str(bundle / SIGNER_KEY_FILE))
    shipped_id = public_key_fingerprint(shipped)
    trusted = list(trusted_keys) if trusted_keys is not None else trusted_keys_for(public_key)
    signer = next((key for key in trusted if public_key_fingerprint(key) == shipped_id), None)
    self_signed = signer is None
    if self_signed:
        if not allow_self_signed:
            raise BundleError(
                f"{bundle}: signed by key {shipped_id[:16]}…, which is not trusted here; pass the signer's public key "
                "with --public-key, add it to your trust list (`secure-ft trust add KEY.pub`), or accept the bundle's "
                "own key with --allow-self-signed (integrity only, not origin)")
        signer = shipped
    with snapshot.private_copy() as copy, tempfile.TemporaryDirectory(prefix="secure-ft-key-") as scratch:
        key_file = Path(scratch, "signer.pub")
        key_file.write_bytes(public_key_pem(signer))
        try:
            # git paths are signed like any file: the library's default exclusion would let .git/ ride along
            signed = verify_folder(copy, key_file, copy / SIGNATURE_FILE, ignore_git_paths=False)
            _refuse_unsigned(snapshot, signed)
            # the gate's verdict may have been signed by another trusted key than the exporter's
            gate_keys = [signer] + [key for key in trusted if key is not signer]
            attested = check_run_attestation(copy, gate_keys, require_pass=False)
            decision = check_release(copy, attested, release)
        except (BundleError, ExportRefused) as error:
            raise type(error)(snapshot.describe_path(str(error), copy)) from None
    return BundleVerification(bundle_dir=bundle, files=len(signed), model_sha256=attested.verdict.model_sha256,
                              policy_name=attested.verdict.policy_name, public_key_sha256=shipped_id,
                              trusted_key=not self_signed, outcome=attested.verdict.outcome,
                              policy_sha256=attested.verdict.policy_sha256, release=decision)


def _refuse_unsigned(snapshot: BundleSnapshot, signed: list[str]) -> None:
    """Every file read (dot-files and ``.git*`` included) must be one the signature covers."""
    unsigned = sorted(set(snapshot.files) - set(signed) - {SIGNATURE_FILE})
    if unsigned:
        raise BundleError(f"{snapshot.root}: {', '.join(unsigned[:5])}{' …' if len(unsigned) > 5 else ''} "
                          "not covered by the bundle's signature; a file added after signing is refused — remove it "
                          "or restore the bundle from its signed copy")
