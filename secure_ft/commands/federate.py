"""`secure-ft federate`: federated fine-tuning over simulated sites (Flower).

The sites are partitions of the config's data (``federated.partition``); each trains through
the same loop as a central run, and the global model is saved like a central run's model, so
``secure-ft run``'s audits, gate and export apply to it. For a deployment across real sites
see ``deploy/README.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secure_ft.records.run_directory import RunDirectory


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "federate", help="federated fine-tuning over simulated sites (Flower) into a new run directory",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", help="run config YAML (default: the built-in demo); see its federated: section")
    parser.add_argument("--out", help="folder for run directories (default: config output_dir)")
    parser.add_argument("--local", action="store_true",
                        help="run the sites in this process one after the other instead of Ray workers "
                             "(no isolation between sites; for debugging and machines without Ray)")
    parser.set_defaults(handler=cmd_federate)


def cmd_federate(args: argparse.Namespace) -> int:
    from federated import run_federated
    from secure_ft.records.config import load_config
    from secure_ft.records.run_directory import new_run_dir

    config = load_config(args.config)
    run_dir = new_run_dir(Path(args.out or config.output_dir))
    trained = run_federated(config, run_dir, progress=True, backend="local" if args.local else "ray")
    print_federated_summary(trained.metrics, trained.run_dir)
    return 0


def print_federated_summary(metrics: dict, run_dir: Path) -> None:
    print(f"run directory: {run_dir}")
    print(f"global model: {RunDirectory(run_dir).model_dir} (sha256 {metrics['model_sha256'][:16]}…, round {metrics['best_round']})")
    print(f"{'round':>5}  {'val acc':>8}  {'macro-F1':>8}  {'sites ok':>8}  problems")
    for entry in metrics["rounds"]:
        scores = entry["server_evaluation"] or {}
        problems = [f"{site['site']} {site['status']}" for site in entry["sites"]
                    if site["phase"] == "train" and site["status"] not in ("accepted",)]
        if not entry["aggregated"]:
            problems.append(f"not aggregated: {entry['skipped_reason']}")
        accuracy = f"{scores['accuracy']:.4f}" if scores else "-"
        macro_f1 = f"{scores['macro_f1']:.4f}" if scores else "-"
        print(f"{entry['round']:>5}  {accuracy:>8}  {macro_f1:>8}  "
              f"{entry['sites_accepted']:>3}/{entry['sites_sampled'] or '?':<4}  {'; '.join(problems)}")
    print(f"majority-class baseline accuracy: {metrics['majority_baseline_accuracy']:.4f}")
    privacy_path = RunDirectory(run_dir).privacy_file
    if privacy_path.is_file():
        privacy = json.loads(privacy_path.read_text(encoding="utf-8"))
        for site, guarantee in sorted(privacy.get("sites", {}).items()):
            print(f"site {site}: sample-level ε = {guarantee['epsilon']:.3f} (δ = {guarantee['delta']:.2g})")
        if privacy.get("central"):
            central = privacy["central"]
            print(f"central: client-level ε = {central['epsilon']:.3f} (δ = {central['delta']:.2g})")
        print(f"weakest guarantee: ε = {privacy['epsilon']:.3f}, δ = {privacy['delta']:.2g} ({privacy['scope']})")
    else:
        print("no differential privacy: neither the sites nor the server added DP noise")
