"""`secure-ft privacy RUN_DIR`: recompute a DP run's ε from its ledger and check privacy.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MISMATCH_EXIT = 4


def cmd_privacy(args: argparse.Namespace) -> int:
    from secure_ft.privacy.recompute import verify_privacy

    result = verify_privacy(Path(args.run_dir))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"privacy guarantee of {result.run_dir}")
        for check in result.checks:
            print(f"  [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
        if result.recomputed_epsilon is not None:
            print(f"recomputed ε = {result.recomputed_epsilon:.6g}"
                  + (f" (privacy.json states {result.reported_epsilon:.6g})" if result.reported_epsilon is not None else ""))
        print("verified: privacy.json matches its ledger" if result.passed else
              "MISMATCH: the stated guarantee does not follow from the ledger (see the checks marked FAIL)")
    return 0 if result.passed else MISMATCH_EXIT


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "privacy", help="recompute a DP run's ε from its privacy ledger and check it against privacy.json",
        description="Recompute ε with fresh Opacus accountants from the run's privacy ledger and from the "
                    "(q, σ, steps) that privacy.json declares; exit 0 when everything matches, 4 otherwise.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory trained with privacy.mode: dp")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=cmd_privacy)
