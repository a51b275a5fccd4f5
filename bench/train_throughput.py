"""Training throughput and peak memory of the one fine-tuning loop on the default model.

Each transfer mode runs in a fresh subprocess (clean peak RSS) on real finance complaints
(builtin:cfpb) at sequence length 128, batch 16, and reports examples/second and peak
resident memory; ratios are against full fine-tuning measured in the same run.

    python bench/train_throughput.py [--steps 8] [--modes full lora top_k]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SEQUENCE_LENGTH = 128
BATCH_SIZE = 16


def measure(mode: str, steps: int, warmup: int) -> dict:
    """Runs inside the child: time `steps` optimizer steps of `fit` after `warmup` steps."""
    import torch

    from secure_ft.records.config import ModelConfig, TrainingConfig
    from secure_ft.records.config import DataConfig
    from secure_ft.records.data import load_splits
    from secure_ft.text.models import apply_transfer, load_base_model, trainable_parameter_count
    from secure_ft.training.training_loop import TrainingEngine, Prepared, encode, forward_logits, _trim
    from torch.utils.data import DataLoader

    splits = load_splits(DataConfig(), seed=13)
    model_config = ModelConfig(transfer=mode, max_length=SEQUENCE_LENGTH)
    model, tokenizer = load_base_model(model_config, splits.label_names)
    model = apply_transfer(model, model_config).train()
    # pad every batch to the full length so all modes see the same work
    texts = splits.train["text"].tolist()[: BATCH_SIZE * (steps + warmup)]
    labels = splits.train["label"].tolist()[: len(texts)]
    dataset = encode(tokenizer, texts, labels, SEQUENCE_LENGTH)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    engine = TrainingEngine(TrainingConfig().max_grad_norm)
    prepared = engine.attach(model, optimizer, loader, epochs=1)
    started = None
    for index, batch in enumerate(prepared.loader):
        if index == warmup:
            started = time.perf_counter()
        loss = prepared.criterion(forward_logits(prepared.model, list(batch)), batch[-1])
        loss.backward()
        engine.before_step(prepared)
        prepared.optimizer.step()
        prepared.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    trainable, total = trainable_parameter_count(model)
    return {
        "mode": mode,
        "examples_per_second": steps * BATCH_SIZE / seconds,
        "seconds_per_step": seconds / steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "trainable_parameters": trainable,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["full", "lora", "top_k"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return
    rows = []
    for mode in args.modes:
        print(f"measuring {mode} ({args.warmup} warm-up + {args.steps} timed steps)…", file=sys.stderr)
        output = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                                 "--warmup", str(args.warmup)], check=True, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    baseline = rows[0]
    print(f"\ndefault model, sequence length {SEQUENCE_LENGTH}, batch {BATCH_SIZE}, "
          f"{baseline['threads']} threads; ratios against {baseline['mode']}")
    print(f"{'mode':<8}{'trainable':>12}{'examples/s':>12}{'× speed':>9}{'s/step':>9}{'peak RSS GB':>13}{'× memory':>10}")
    for row in rows:
        print(f"{row['mode']:<8}{row['trainable_parameters']:>12,}{row['examples_per_second']:>12.2f}"
              f"{row['examples_per_second'] / baseline['examples_per_second']:>9.2f}{row['seconds_per_step']:>9.2f}"
              f"{row['peak_rss_gb']:>13.2f}{row['peak_rss_gb'] / baseline['peak_rss_gb']:>10.2f}")


if __name__ == "__main__":
    main()
