"""`secure-ft privacy RUN_DIR`: recompute a DP run's ε from its ledger and check privacy.json.

`secure-ft privacy budget [--data FILE | --fingerprint F] [--json]`: a data set's privacy
budget ledger (`secure_ft.privacy.budget_ledger`), every run with its kind (training, simulated
federation — its sites composed sequentially —, canary audit, bench), its ε and the
cumulative ε, with notes on what the kinds mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secure_ft.errors import ConfigError

MISMATCH_EXIT = 4
BUDGET = "budget"


def cmd_privacy(args: argparse.Namespace) -> int:
    from secure_ft.privacy.recompute import verify_privacy

    if args.run_dir == BUDGET:
        return cmd_budget(args)
    if args.data or args.fingerprint:
        raise ConfigError("--data and --fingerprint belong to `secure-ft privacy budget`; "
                          f"`secure-ft privacy RUN_DIR` reads the run directory {args.run_dir}")

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


def _fingerprint_of(args: argparse.Namespace) -> str:
    """The fingerprint asked for: given, or computed from --data FILE as training computes it."""
    if args.fingerprint:
        return args.fingerprint.lower()
    from secure_ft.records.config import RunConfig, load_config
    from secure_ft.records.data import load_splits

    config = load_config(args.config) if args.config else RunConfig()
    data = config.data.model_copy(update={"source": str(Path(args.data))})
    return load_splits(data, config.seed).fingerprint


def cmd_budget(args: argparse.Namespace) -> int:
    """`secure-ft privacy budget`: the data set's ledger as a table (or JSON), composed by the accountant."""
    from secure_ft.privacy.budget_composition import budget_delta, compose_ledger, format_epsilon
    from secure_ft.privacy.budget_ledger import BudgetLedger, budget_dir_for
    from secure_ft.records.config import RunConfig, load_config

    if bool(args.data) == bool(args.fingerprint):
        raise ConfigError("secure-ft privacy budget: give the data set as --data FILE (with --config for its "
                          "columns) or --fingerprint F (from a run's data.json), one of them")
    folder = Path(args.budget_dir) if args.budget_dir else budget_dir_for(load_config(args.config) if args.config
                                                                           else RunConfig())
    fingerprint = _fingerprint_of(args)
    entries = BudgetLedger(folder).entries(fingerprint)
    statement = compose_ledger(fingerprint, entries, budget_delta(entries, args.delta))
    if args.json:
        print(json.dumps({**statement.to_dict(), "budget_dir": str(folder)}, indent=2))
        return 0
    print(f"privacy budget of data set {fingerprint} ({folder})")
    if not entries:
        print("  no run recorded on this data set: nothing spent")
        return 0
    header = ("run", "kind", "date", "status", "mechanism", "ε of the run", "cumulative ε")
    rows = [(row["run"], row["kind_note"], row["date"], row["status"], row["mechanism"],
             format_epsilon(row["epsilon"]), format_epsilon(row["cumulative_epsilon"])) for row in statement.rows]
    widths = [max(len(str(value)) for value in column) for column in zip(header, *rows)]
    for line in (header, *rows):
        print("  " + "  ".join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip())
    print(f"cumulative ε = {format_epsilon(statement.cumulative_epsilon)} at δ = {statement.delta:.3g} over "
          f"{len(entries)} run(s); {statement.to_dict()['note']}: RDP gives {format_epsilon(statement.rdp_epsilon)}"
          if statement.delta is not None else "cumulative ε = ∞: only runs without differential privacy")
    for note in budget_notes(statement.rows):
        print(f"note: {note}")
    return 0


def budget_notes(rows: list[dict]) -> list[str]:
    """What the table's kinds mean, said once each: federations composed sequentially, central DP, canaries."""
    from audits._canary import MAX_TRAIN_ROWS
    from federated.simulation_budget import CENTRAL_NOT_COUNTED, SEQUENTIAL

    notes = []
    if any(row.get("composition") for row in rows):
        notes.append("a simulated federation's sites are composed " + SEQUENTIAL.replace("sequential:", "sequentially:", 1))
    if any(row.get("central") for row in rows):
        notes.append(f"server-side (central) DP: {CENTRAL_NOT_COUNTED}")
    if any(row.get("kind") == "canary audit" for row in rows):
        notes.append(f"a canary audit is the privacy audit's throw-away run on up to {MAX_TRAIN_ROWS} training rows "
                     "plus inserted canaries; its exposures are released in the report, so it spends the budget too")
    return notes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "privacy", help="recompute a DP run's ε from its privacy ledger and check it against privacy.json",
        description="Recompute ε with fresh Opacus accountants from the run's privacy ledger and from the "
                    "(q, σ, steps) that privacy.json declares; exit 0 when everything matches, 4 otherwise.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory trained with privacy.mode: dp, or "
                        "`budget` for a data set's privacy budget ledger (a run folder named budget: ./budget)")
    parser.add_argument("--json", action="store_true", help="print the checks (or the budget ledger) as JSON")
    budget = parser.add_argument_group("secure-ft privacy budget [--data FILE | --fingerprint F]",
                                       "every run recorded on a data set (training runs, simulated federations, "
                                       "canary audits, benchmarks): run, kind, date, mechanism, ε of the run and "
                                       "the cumulative ε, composed by the PRV accountant")
    budget.add_argument("--data", metavar="FILE", help="the data file (its fingerprint is computed as training does)")
    budget.add_argument("--config", metavar="CONFIG", help="run config giving the data's columns and "
                        "privacy.budget_dir (default: the built-in config)")
    budget.add_argument("--fingerprint", metavar="F", help="the data fingerprint (data.json of a run)")
    budget.add_argument("--budget-dir", metavar="DIR", help="the ledger folder (default: privacy.budget_dir of "
                        "--config, else $SECURE_FT_BUDGET_DIR, else the per-user data folder)")
    budget.add_argument("--delta", type=float, help="state ε at this δ if smaller than every run's own δ")
    parser.set_defaults(handler=cmd_privacy)
