"""CLI: ``export`` (``--register NAME``: into the MLflow registry), ``verify`` (a folder or ``models:/NAME/VERSION``),
``keygen`` and ``ledger verify``.

Exit codes: 0 ok; 2 bad input; 3 export refused, or a bundle refused by the release policy (the
reasons are printed, each naming its rule); 4 a bundle, ledger, approval or release policy failed
verification (the first file or line that differs is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secure_ft.errors import SecureFTError


def _fail(error: SecureFTError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code


def cmd_export(args: argparse.Namespace) -> int:
    from secure_ft.release.export import SIGNATURE_FILE, export_bundle

    try:
        bundle = export_bundle(Path(args.run_dir), Path(args.out), signing_key=args.signing_key,
                               public_key=args.public_key, signing_key_given_by="--signing-key",
                               release_policy=args.release_policy, org_root_pub=args.org_root_pub)
    except SecureFTError as error:
        if error.exit_code == 3:
            print(f"export refused: {error}", file=sys.stderr)
            return 3
        return _fail(error)
    print(f"bundle: {bundle}")
    for line in _release_lines(Path(args.run_dir)):
        print(f"  {line}")
    print(f"signed (OpenSSF model-signing): {bundle / SIGNATURE_FILE}")
    print(f"check it with: secure-ft verify {bundle} --public-key SIGNER.pub")
    # the library's command skips .git* paths unless told not to; bundles sign them, so it must check them too
    print(f"           or: model_signing verify key {bundle} --signature {bundle / SIGNATURE_FILE} "
          "--public_key SIGNER.pub --no-ignore-git-paths")
    if args.register:
        return _register_exported(args, bundle)
    return 0


def _register_exported(args: argparse.Namespace, bundle: Path) -> int:
    """`export --register NAME`: the bundle just written becomes a new version of NAME in the MLflow registry."""
    from secure_ft.commands.tracking import print_registration
    from secure_ft.pipeline.mlflow_registry import record_registration, register_bundle
    from secure_ft.records.run_directory import RunDirectory
    from secure_ft.release.export import trusted_keys_for
    from secure_ft.release.keys import load_private_key, resolve_signing_key_path

    run_dir = Path(args.run_dir)
    try:
        uri = args.tracking_uri or RunDirectory(run_dir).read_config().tracking.mlflow.uri
        key_path, _, _ = resolve_signing_key_path(args.signing_key, "--signing-key")
        # the key that just signed the bundle is trusted for it, as export's own check trusted it
        trusted = [load_private_key(key_path).public_key(), *trusted_keys_for(args.public_key)]
        registration = register_bundle(bundle, args.register, uri, trusted_keys=trusted, run_dir_name=run_dir.name,
                                       release_policy=args.release_policy, org_root_pub=args.org_root_pub)
        record_registration(run_dir, registration)
    except SecureFTError as error:
        print(f"error: the bundle was written but not registered: {error}", file=sys.stderr)
        print(f"register it later with: secure-ft mlflow register {bundle} {args.register}", file=sys.stderr)
        return error.exit_code
    print_registration(registration)
    return 0


def _release_lines(run_dir: Path) -> list[str]:
    """What the run ledger's last ``export`` event recorded about the release policy export applied."""
    from secure_ft.records.run_ledger import Ledger

    events = [e for e in Ledger(run_dir).events() if e.get("event") == "export"]
    summary = (events[-1].get("data") or {}).get("release_policy") or {} if events else {}
    if not summary.get("applied"):
        return [summary.get("note") or "no release policy applied"]
    lines = [f"release policy {summary['name']!r} (sha256 {summary['sha256'][:16]}…) applied: every rule met"]
    lines += [f"approved by {a['approver']} (key {a['fingerprint'][:16]}…) at {a['time']}: {a['comment']}"
              for a in summary.get("approvals") or []]
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    from secure_ft.pipeline.mlflow_registry import is_registry_uri, verify_registered
    from secure_ft.records.policy import describe_policy
    from secure_ft.release.export import verify_bundle

    try:
        if is_registry_uri(args.bundle):
            # a registered version: its artifacts are downloaded and the bundle inside checked like a folder
            result = verify_registered(args.bundle, args.tracking_uri, public_key=args.public_key,
                                       allow_self_signed=args.allow_self_signed, release_policy=args.release_policy,
                                       org_root_pub=args.org_root_pub).bundle
        else:
            result = verify_bundle(Path(args.bundle), public_key=args.public_key,
                                   allow_self_signed=args.allow_self_signed, release_policy=args.release_policy,
                                   org_root_pub=args.org_root_pub)
    except SecureFTError as error:
        if error.exit_code == 3:
            print(f"verify refused: {error}", file=sys.stderr)
            return 3
        return _fail(error)
    print(f"bundle OK: {result.bundle_dir}")
    print(f"  {result.files} files match the OpenSSF signature")
    print(f"  model digest {result.model_sha256}, signed verdict: {result.outcome} under policy "
          f"{describe_policy(result.policy_name, result.policy_sha256)}")
    for line in result.release.lines() if result.release else ():
        print(f"  {line}")
    if result.trusted_key:
        print(f"  signed by a trusted key (SHA-256 {result.public_key_sha256})")
    else:
        print(f"  SELF-SIGNED: verified with the bundle's own key (SHA-256 {result.public_key_sha256}), accepted "
              "because of --allow-self-signed. This proves the bundle is unchanged, not who made it.")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from secure_ft.release.keys import generate_key_pair, load_public_key, public_key_fingerprint

    try:
        private_path, public_path = generate_key_pair(args.out)
    except SecureFTError as error:
        return _fail(error)
    fingerprint = public_key_fingerprint(load_public_key(public_path))
    print(f"private key: {private_path} (ECDSA P-256, mode 0600; keep it secret, e.g. in your secrets manager)")
    print(f"public key:  {public_path} (SHA-256 {fingerprint}; give it to whoever verifies bundles)")
    print(f"use it with: export.signing_key: {private_path}  or  SECURE_FT_SIGNING_KEY={private_path}")
    print(f"verifiers trust it with: secure-ft trust add {public_path}")
    return 0


def cmd_trust_add(args: argparse.Namespace) -> int:
    from secure_ft.release.keys import load_public_key, public_key_fingerprint, trust_public_key

    try:
        target = trust_public_key(args.public_key)
    except SecureFTError as error:
        return _fail(error)
    print(f"trusted: {target} (SHA-256 {public_key_fingerprint(load_public_key(target))})")
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from secure_ft.records.policy import describe_policy
    from secure_ft.records.run_directory import RUN_LEDGER_FILE, VERDICT_ATTESTATION_FILE
    from secure_ft.records.run_ledger import Ledger, verify_ledger
    from secure_ft.release.export import trusted_keys_for
    from secure_ft.release.verdict_attestation import check_run_attestation

    run_dir = Path(args.run_dir)
    try:
        lines = verify_ledger(run_dir)
        anchored = None
        if (run_dir / VERDICT_ATTESTATION_FILE).is_file():
            # the signed verdict holds the ledger's head: a cut tail or a rewritten chain shows here
            anchored = check_run_attestation(run_dir, trusted_keys_for(args.public_key), require_pass=False)
    except SecureFTError as error:
        return _fail(error)
    events = Ledger(run_dir).events()
    print(f"ledger OK: {lines} events, hash chain intact ({run_dir / RUN_LEDGER_FILE})")
    if anchored is not None:
        print(f"  anchored: line {anchored.ledger_lines} matches the head signed with the verdict "
              f"(key {anchored.signer_sha256[:16]}…)")
        shown = describe_policy(anchored.verdict.policy_name, anchored.verdict.policy_sha256)
        print(f"  signed verdict: {anchored.verdict.outcome} under policy {shown}, "
              "re-derived from the signed audit results")
    else:
        print("  not anchored: the run has no signed verdict yet, so a cut tail cannot be detected")
    if events:
        print(f"  first: {events[0]['timestamp']} {events[0]['event']}")
        print(f"  last:  {events[-1]['timestamp']} {events[-1]['event']}")
    return 0


def register(subparsers) -> None:
    """Add ``export``, ``verify``, ``keygen``, ``trust`` and ``ledger`` to the ``secure-ft`` command."""
    from secure_ft.commands.release import add_release_policy_arguments

    export = subparsers.add_parser("export", help="write a signed bundle of a run whose signed verdict passed")
    export.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding a signed, passing verdict")
    export.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create (must not exist)")
    export.add_argument("--signing-key", metavar="KEY",
                        help="P-256 private key PEM that signs the bundle (default: $SECURE_FT_SIGNING_KEY, else the "
                             "per-user key)")
    export.add_argument("--public-key", metavar="KEY",
                        help="the gate's public key (file or folder of *.pub) the verdict must be signed with "
                             "(default: your trust list)")
    add_release_policy_arguments(export)
    export.add_argument("--register", metavar="NAME",
                        help="also register the signed bundle as a new version of NAME in the MLflow model registry "
                             "(needs the mlflow extra)")
    export.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow registry for --register (default: the run's tracking.mlflow.uri, else "
                             "$MLFLOW_TRACKING_URI)")
    export.set_defaults(handler=cmd_export)

    verify = subparsers.add_parser("verify", help="check a bundle's OpenSSF signature, every file and its signed verdict")
    verify.add_argument("bundle", metavar="BUNDLE", help="bundle folder, or a registered version models:/NAME/VERSION")
    verify.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow registry of a models:/ URI (default: $MLFLOW_TRACKING_URI)")
    verify.add_argument("--public-key", metavar="KEY",
                        help="signer's public key PEM or a folder of them (default: your trust list)")
    verify.add_argument("--allow-self-signed", action="store_true",
                        help="accept the key shipped inside the bundle (integrity only, not origin)")
    add_release_policy_arguments(verify)
    verify.set_defaults(handler=cmd_verify)

    keygen = subparsers.add_parser("keygen", help="create an ECDSA P-256 key pair for signing verdicts and bundles")
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.key (private) and PREFIX.pub")
    keygen.set_defaults(handler=cmd_keygen)

    trust = subparsers.add_parser("trust", help="manage the public keys this machine trusts")
    trust_actions = trust.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    add = trust_actions.add_parser("add", help="trust a signer's public key (copied into your trust list)")
    add.add_argument("public_key", metavar="KEY.pub")
    add.set_defaults(handler=cmd_trust_add)

    ledger = subparsers.add_parser("ledger", help="inspect a run's hash-chained ledger")
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    check = actions.add_parser("verify", help="detect edited, dropped, cut, inserted or reordered ledger lines, "
                                              "against the anchor in the signed verdict")
    check.add_argument("run_dir", metavar="RUN_DIR")
    check.add_argument("--public-key", metavar="KEY", help="the gate's public key (default: your trust list)")
    check.set_defaults(handler=cmd_ledger_verify)
