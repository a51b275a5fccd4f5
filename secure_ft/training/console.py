"""What the command line prints about a finished training run (shared by every launcher)."""

from __future__ import annotations

from pathlib import Path

from secure_ft.records.run_directory import MODEL_DIR


def print_training_summary(metrics: dict, run_dir: Path, *, show_run_dir: bool = True) -> None:
    """Run directory, model digest, steps and the best epoch's validation scores.

    `show_run_dir` False when the caller prints the run directory itself (``secure-ft run``
    ends with the outcome, which names it).
    """
    best = metrics.get("best") or {}
    if show_run_dir:
        print(f"run directory: {run_dir}")
    print(f"model: {Path(run_dir) / MODEL_DIR} (sha256 {metrics['model_sha256'][:16]}…)")
    print(f"steps: {metrics['steps']}  stopped: {metrics['stopped_reason']}  best epoch: {metrics['best_epoch']}")
    if best:
        print(f"validation accuracy: {best['val_accuracy']:.4f}  macro-F1: {best['val_macro_f1']:.4f}  "
              f"(majority-class baseline accuracy: {metrics['majority_baseline_accuracy']:.4f})")
