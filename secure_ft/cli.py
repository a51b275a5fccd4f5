"""The `secure-ft` command line.

Exit codes: 0 success; 2 bad input or config; 3 export refused by the gate; 4 a bundle or
ledger failed verification; 1 an internal error. Bad input prints one message and no
traceback (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import traceback
from pathlib import Path

from secure_ft.errors import SecureFTError
from secure_ft.records.offline_environment import quiet_third_party
from secure_ft.training.console import print_training_summary

log = logging.getLogger("secure_ft")


def cmd_train(args: argparse.Namespace) -> int:
    from secure_ft.records.config import load_config
    from secure_ft.training.central_run import train_run

    if args.resume:
        trained = train_run(None, Path(args.resume), resume=True)
    else:
        config = load_config(args.config)
        trained = train_run(config, output_dir=args.out or config.resolve_path(config.output_dir))
    print_training_summary(trained.metrics, trained.run_dir)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from secure_ft.pipeline.main_job import print_outcome, run_pipeline
    from secure_ft.records.config import load_config
    from secure_ft.records.run_directory import RunDirectory

    config = load_config(args.config)
    out = Path(args.out or config.resolve_path(config.output_dir))
    resume = Path(args.resume) if args.resume else None
    if resume is not None:
        config = RunDirectory(resume).read_config()
        out = resume.parent
    outcome = run_pipeline(config, out, resume_dir=resume)
    metrics = RunDirectory(outcome.run_dir).read_metrics()
    if metrics is not None:
        print_training_summary(metrics, outcome.run_dir, show_run_dir=False)  # the outcome names it
    print_outcome(outcome)
    return outcome.exit_code


def cmd_config_show(args: argparse.Namespace) -> int:
    import json

    from secure_ft.records.config import load_config
    from secure_ft.training.effective_config import effective_config, render_effective_config

    effective = effective_config(load_config(args.file))  # loads and splits the data: N decides transfer and δ
    if args.json:
        print(json.dumps(effective.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(render_effective_config(effective), end="")
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    from secure_ft.errors import ConfigError
    from secure_ft.records.atomic_files import atomic_write_text
    from secure_ft.records.config import starter_config_text

    target = Path(args.file)
    if target.exists() and not args.force:
        raise ConfigError(f"{target}: already exists; pass --force to overwrite it")
    atomic_write_text(target, starter_config_text())
    print(f"wrote {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secure-ft", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the main job: train, audit, gate, report and export if passed")
    run.add_argument("--config", help="run config YAML (default: the built-in demo)")
    run.add_argument("--out", help="folder for the run directory and bundle (default: config output_dir)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run, then audit it")
    run.set_defaults(handler=cmd_run)

    train = commands.add_parser("train", help="fine-tune a model (plain or DP) into a new run directory")
    train.add_argument("--config", help="run config YAML (default: the built-in demo)")
    train.add_argument("--out", help="folder for run directories (default: config output_dir)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    train.set_defaults(handler=cmd_train)

    config = commands.add_parser("config", help="show or create run configs")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_commands.add_parser(
        "show", help="print the config a run will use (transfer, recipe, δ resolved), each value with its source")
    show.add_argument("file", nargs="?", help="config YAML (default: built-in)")
    show.add_argument("--json", action="store_true", help="print JSON: every dotted key with its value and source")
    show.set_defaults(handler=cmd_config_show)
    init = config_commands.add_parser("init", help="write a commented starter config")
    init.add_argument("file", nargs="?", default="secure-ft.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=cmd_config_init)

    # every module in secure_ft/commands adds its own subcommands
    import secure_ft.commands as command_package

    for module_info in sorted(pkgutil.iter_modules(command_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"secure_ft.commands.{module_info.name}")
        if hasattr(module, "register"):
            module.register(commands)
    return parser


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    quiet_third_party()
    # `kill` (SIGTERM) unwinds like Ctrl-C, so every `finally` runs: attack workers, Flower and
    # serving processes this command started are stopped, temporary files removed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.handler(args) or 0)
    except SecureFTError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        # each command may say what an interruption means for it (the deploy commands do)
        print(getattr(args, "interrupted_hint", None) or
              "interrupted; a central run continues from its last checkpoint with "
              "`secure-ft run --resume RUN_DIR` (or `secure-ft train --resume RUN_DIR`)", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so, keep the traceback behind --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
