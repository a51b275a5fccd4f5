"""`secure-ft audit RUN_DIR [--policy P]`: audits → gate → report → signed verdict of a finished run.

For any run directory, whatever trained it: a central `secure-ft train`, a simulated
federation, or a deployed one (the coordinator's run directory, audited on the coordinator's
held-out data named in the run's recorded config). The same pipeline steps as `secure-ft run`
(`secure_ft.pipeline.main_job.audit_finished_run`); export is a separate step, `secure-ft export`.
Exit 0 when the gate passed, 3 when it blocked or its verdict needs review (export refuses
both), 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GATE_BLOCKED_EXIT = 3


def cmd_audit(args: argparse.Namespace) -> int:
    from secure_ft.pipeline.main_job import audit_finished_run, print_outcome

    outcome = audit_finished_run(Path(args.run_dir), args.policy)
    print_outcome(outcome)
    return 0 if outcome.verdict.passed else GATE_BLOCKED_EXIT


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="audit, gate, report and sign the verdict of a finished run (central, simulated or deployed)",
        description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (holds model/ and config.yaml)")
    parser.add_argument("--policy", metavar="POLICY_YAML",
                        help="the policy to gate on (default: the run config's policy, else the built-in default)")
    parser.set_defaults(handler=cmd_audit)
