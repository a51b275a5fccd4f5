"""Central DP training on several processes or GPUs with ``torchrun``.

    torchrun --nproc_per_node 2 -m secure_ft.distributed --config run.yaml [--out runs/]
    torchrun --nproc_per_node 2 -m secure_ft.distributed --resume runs/run-…

Every process holds the whole (small) training set and a replica of the model. The model is
wrapped in Opacus' ``DifferentiallyPrivateDistributedDataParallel`` and the optimizer becomes
Opacus' ``DistributedDPOptimizer``: each process clips its examples' gradients, process 0
adds the Gaussian noise once, and the sums are all-reduced, so all replicas take the same
step. The guarantee is that of one logical batch per step, exactly as on one process.

Sampling: every process draws the same global Poisson batch and takes its share of it
(`secure_ft.privacy.sharded_poisson`), so ε is computed from the global q, σ and steps.

Process 0 writes the run directory (model, metrics, privacy.json, checkpoints); the other
processes train and read the same checkpoint on resume. On CPU the gloo backend is used,
on GPUs nccl with one device per local rank.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
import torch

from secure_ft.records.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


class FollowerCheckpoints(CheckpointStore):
    """The checkpoints of process 0, read (for resume) but never written by another process."""

    def save(self, state):  # noqa: D401 - process 0 writes; the state is identical here
        return self.last_path


def _init_process_group() -> tuple[int, int]:
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit("secure_ft.distributed must be started by torchrun (RANK / WORLD_SIZE are not set), e.g.\n"
                         "  torchrun --nproc_per_node 2 -m secure_ft.distributed --config run.yaml")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # "cuda" then means this process's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def train_distributed(config, run_dir: Path | None, *, resume: bool, rank: int,
                      progress: bool = True):
    """Train one central DP run; process 0 builds the run directory via `train_run`."""
    import torch.distributed as dist

    from secure_ft.records.data import load_splits
    from secure_ft.records.run_directory import RunDirectory, new_run_dir
    from secure_ft.text.models import apply_transfer, load_base_model, resolve_device
    from secure_ft.training.central_run import make_engine, train_run
    from secure_ft.training.training_loop import encode, fit, seed_everything

    if config is not None and config.privacy.mode != "dp":
        raise SystemExit("secure_ft.distributed trains central DP runs; set privacy.mode: dp")
    if config is not None:
        from secure_ft.training.transfer_choice import resolve_run_config

        config, choice = resolve_run_config(config, len(load_splits(config.data, config.seed).train))
        if choice.transfer == "probe":
            raise SystemExit(f"model.transfer resolves to probe ({choice.reason}): the probe trains a linear head in "
                             "seconds on one process; run `secure-ft train` instead, or set model.transfer: lora to "
                             "train across processes")
    # process 0 chooses the run directory and tells the others
    if rank == 0 and run_dir is None:
        run_dir = new_run_dir(config.output_dir)
    shared = [str(run_dir) if run_dir is not None else None]
    dist.broadcast_object_list(shared, src=0)
    run_dir = Path(shared[0])
    if rank == 0:
        return train_run(None if resume else config, run_dir, resume=resume, progress=progress)
    if resume:
        config = RunDirectory(run_dir).read_config()
    splits = load_splits(config.data, config.seed)
    seed_everything(config.seed)  # the same fresh head and adapters as rank 0
    base, tokenizer = load_base_model(config.model, splits.label_names)
    model = apply_transfer(base, config.model)
    max_length = config.model.max_length
    train_set = encode(tokenizer, splits.train["text"].tolist(), splits.train["label"].tolist(), max_length)
    validation_set = encode(tokenizer, splits.validation["text"].tolist(), splits.validation["label"].tolist(),
                            max_length)
    engine = make_engine(config, splits)
    fit(model, train_set, validation_set, splits.label_names, config.training, seed=config.seed,
        device=resolve_device(config.device),
        engine=engine, checkpoints=FollowerCheckpoints(RunDirectory(run_dir).checkpoint_dir), resume=resume,
        fingerprint=splits.fingerprint, progress=False)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun … -m secure_ft.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config YAML (default: the built-in demo)")
    parser.add_argument("--out", help="folder for run directories (default: config output_dir)")
    parser.add_argument("--run-dir", help="exact run directory to create (default: a new one under --out)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed distributed run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from secure_ft.errors import SecureFTError
    from secure_ft.records.config import load_config
    from secure_ft.records.offline_environment import quiet_third_party

    rank, world_size = _init_process_group()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}/{world_size}] %(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    import torch.distributed as dist

    try:
        if args.resume:
            trained = train_distributed(None, Path(args.resume), resume=True, rank=rank,
                                        progress=not args.no_progress)
        else:
            config = load_config(args.config)
            if args.out:
                config = config.model_copy(update={"output_dir": args.out})
            run_dir = Path(args.run_dir) if args.run_dir else None
            trained = train_distributed(config, run_dir, resume=False, rank=rank,
                                        progress=not args.no_progress)
        if rank == 0 and trained is not None:
            from secure_ft.training.console import print_training_summary

            print_training_summary(trained.metrics, trained.run_dir)
        return 0
    except SecureFTError as error:
        print(f"[rank {rank}] error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
