"""CLI: ``export``, ``verify``, ``keygen`` and ``ledger verify``.

Exit codes: 0 ok; 2 bad input; 3 export refused (the reasons are printed); 4 a bundle or
ledger failed verification (the first file or line that differs is printed).
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
    from secure_ft.export import MANIFEST_FILE, export_bundle

    try:
        bundle = export_bundle(Path(args.run_dir), Path(args.out), signing_key=args.signing_key)
    except SecureFTError as error:
        if error.exit_code == 3:
            print(f"export refused: {error}", file=sys.stderr)
            return 3
        return _fail(error)
    signature = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))["signature"]
    print(f"bundle: {bundle}")
    print(f"signed with: {signature['key_source']} (public key SHA-256 {signature['public_key_sha256']})")
    if signature["key_source"].startswith("run-local"):
        print("note: no signing key was configured; a run-local key pair was generated. Verifiers need its public "
              "key; set export.signing_key or $SECURE_FT_SIGNING_KEY to sign with your organisation's key.")
    print(f"check it with: secure-ft verify {bundle} --public-key PUBLIC_KEY.pub")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from secure_ft.export import verify_bundle

    try:
        result = verify_bundle(Path(args.bundle), public_key=args.public_key)
    except SecureFTError as error:
        return _fail(error)
    print(f"bundle OK: {result.bundle_dir}")
    print(f"  {result.files} files match the signed manifest")
    print(f"  model SHA-256 {result.model_sha256}, passed policy {result.policy_name!r}")
    if result.trusted_key:
        print(f"  signature verified with the given public key (SHA-256 {result.public_key_sha256})")
    else:
        print(f"  signature verified with the bundle's own public key (SHA-256 {result.public_key_sha256}).")
        print("  This proves the bundle is unchanged, not who made it: pass --public-key with the signer's key.")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from secure_ft.signing import keygen, load_private_key, public_key_fingerprint

    try:
        private_path, public_path = keygen(args.out)
    except SecureFTError as error:
        return _fail(error)
    fingerprint = public_key_fingerprint(load_private_key(private_path).public_key())
    print(f"private key: {private_path} (mode 0600; keep it secret, e.g. in your secrets manager)")
    print(f"public key:  {public_path} (SHA-256 {fingerprint}; give it to whoever verifies bundles)")
    print(f"use it with: export.signing_key: {private_path}  or  SECURE_FT_SIGNING_KEY={private_path}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from secure_ft.run_ledger import Ledger, verify_ledger

    try:
        lines = verify_ledger(Path(args.run_dir))
    except SecureFTError as error:
        return _fail(error)
    events = Ledger(Path(args.run_dir)).events()
    print(f"ledger OK: {lines} events, hash chain intact ({Path(args.run_dir) / 'ledger.jsonl'})")
    if events:
        print(f"  first: {events[0]['timestamp']} {events[0]['event']}")
        print(f"  last:  {events[-1]['timestamp']} {events[-1]['event']}")
    return 0


def register(subparsers) -> None:
    """Add ``export``, ``verify``, ``keygen`` and ``ledger`` to the ``secure-ft`` command."""
    export = subparsers.add_parser("export", help="write a signed bundle of a run whose model passed the gate")
    export.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding a passing verdict")
    export.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to create (must not exist)")
    export.add_argument("--signing-key", metavar="KEY",
                        help="Ed25519 private key PEM (default: export.signing_key, $SECURE_FT_SIGNING_KEY, "
                             "else a run-local key)")
    export.set_defaults(handler=cmd_export)

    verify = subparsers.add_parser("verify", help="check a bundle's signature and every file hash")
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument("--public-key", metavar="KEY", help="signer's public key PEM (default: the bundle's own key)")
    verify.set_defaults(handler=cmd_verify)

    keygen = subparsers.add_parser("keygen", help="create an Ed25519 key pair for signing bundles")
    keygen.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.key (private) and PREFIX.pub")
    keygen.set_defaults(handler=cmd_keygen)

    ledger = subparsers.add_parser("ledger", help="inspect a run's hash-chained ledger")
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    check = actions.add_parser("verify", help="detect edited, dropped, inserted or reordered ledger lines")
    check.add_argument("run_dir", metavar="RUN_DIR")
    check.set_defaults(handler=cmd_ledger_verify)
