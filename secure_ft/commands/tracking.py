"""CLI: ``mlflow sync`` and ``mlflow register`` (MLflow is an optional extra: ``pip install 'secure-ft[mlflow]'``).

Exit codes: 0 ok; 2 bad input, or MLflow unreachable; 3 the bundle's verdict did not pass; 4 the
bundle does not verify.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from secure_ft.pipeline.mlflow_tracking import record_sync, sync_run
    from secure_ft.records.run_ledger import Ledger

    result = sync_run(Path(args.run_dir), args.tracking_uri, experiment=args.experiment, run_name=args.run_name)
    if result.already_synced:
        print(f"already in MLflow: run {result.run_id} (experiment {result.experiment_id}) at {result.tracking_uri}; "
              "nothing uploaded")
        return 0
    record_sync(Ledger(args.run_dir), result)
    print(f"uploaded {args.run_dir} to MLflow at {result.tracking_uri}: run {result.run_id} in experiment "
          f"{result.experiment_id} ({result.params} params, {result.metrics} metric values, "
          f"{result.artifacts} artifacts)")
    return 0


def cmd_mlflow_register(args: argparse.Namespace) -> int:
    from secure_ft.pipeline.mlflow_registry import register_bundle

    registration = register_bundle(Path(args.bundle), args.name, args.tracking_uri, public_key=args.public_key,
                                   release_policy=args.release_policy, org_root_pub=args.org_root_pub)
    print_registration(registration)
    return 0


def print_registration(registration) -> None:
    tags = registration.tags
    print(f"registered: {registration.model_uri} (verdict {tags['secure_ft.verdict']}, policy "
          f"{tags['secure_ft.policy_name']!r}, bundle sha256 {tags['secure_ft.bundle_sha256'][:16]}…)")
    print(f"load it with: mlflow.pyfunc.load_model({registration.model_uri!r})")
    print(f"check it with: secure-ft verify {registration.model_uri}")


def register(subparsers) -> None:
    """Add ``mlflow`` (``sync``, ``register``) to the ``secure-ft`` command."""
    from secure_ft.commands.release import add_release_policy_arguments

    mlflow = subparsers.add_parser("mlflow", help="show runs in MLflow and register gated bundles in its registry")
    actions = mlflow.add_subparsers(dest="mlflow_command", metavar="ACTION", required=True)
    sync = actions.add_parser("sync", help="upload a finished run directory to MLflow (again safe: uploads once)")
    sync.add_argument("run_dir", metavar="RUN_DIR")
    sync.add_argument("--tracking-uri", metavar="URI",
                      help="MLflow tracking URI (default: the run config's tracking.mlflow.uri, else "
                           "$MLFLOW_TRACKING_URI)")
    sync.add_argument("--experiment", help="experiment name (default: tracking.mlflow.experiment)")
    sync.add_argument("--run-name", help="MLflow run name (default: tracking.mlflow.run_name, else the folder name)")
    sync.set_defaults(handler=cmd_mlflow_sync)
    reg = actions.add_parser("register", help="verify a signed bundle and register it as a new model version")
    reg.add_argument("bundle", metavar="BUNDLE")
    reg.add_argument("name", metavar="NAME", help="registered model name")
    reg.add_argument("--tracking-uri", metavar="URI", help="MLflow registry URI (default: $MLFLOW_TRACKING_URI)")
    reg.add_argument("--public-key", metavar="KEY",
                     help="the bundle signer's public key (default: your trust list); self-signed bundles are refused")
    add_release_policy_arguments(reg)
    reg.set_defaults(handler=cmd_mlflow_register)
