"""What differential privacy costs per optimizer step: time and peak memory, against non-private.

    .venv/bin/python bench/dp_overhead.py [--steps 4] [--seq 128] [--batch 32] [--threads 2]

Each configuration runs in a fresh subprocess (clean peak RSS) on the default model
(all-MiniLM-L6-v2), with real CFPB complaint text padded / truncated to `--seq` tokens and a
logical batch of `--batch`. A step is what `secure_ft.training.training_loop.fit` does for one logical
batch: forward, backward, the engine's clipping (plain: total-norm clipping; DP: Opacus'
per-sample clipping + noise inside optimizer.step()) and the update. DP batches are Poisson
sampled (expected size `--batch`) from 10 × batch examples with the same seed in every
configuration. One warm-up step is not timed. Ratios are to the non-private run of the same
transfer mode (full fine-tuning or LoRA), measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = [
    # (name, transfer, private, grad_sample_mode)
    ("non-private", "full", False, None),
    ("DP hooks", "full", True, "hooks"),
    ("DP ghost", "full", True, "ghost"),
    ("DP bookkeeping", "full", True, "bookkeeping"),
    ("non-private", "lora", False, None),
    ("DP hooks", "lora", True, "hooks"),
    ("DP ghost", "lora", True, "ghost"),
    ("DP bookkeeping", "lora", True, "bookkeeping"),
]


def measure(transfer: str, private: bool, mode: str | None, steps: int, seq: int, batch: int, threads: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(threads)
    from secure_ft.records.config import ModelConfig, PrivacyConfig, RunConfig
    from secure_ft.records.data import load_splits
    from secure_ft.text.models import apply_transfer, load_base_model, trainable_parameter_count
    from secure_ft.training.training_loop import TrainingEngine, encode, forward_logits

    config = RunConfig()
    splits = load_splits(config.data, config.seed)
    model_config = ModelConfig(transfer=transfer, max_length=seq)
    model, tokenizer = load_base_model(model_config, splits.label_names)
    model = apply_transfer(model, model_config).train()
    rows = splits.train.sort_values("text", key=lambda s: -s.str.len()).head(10 * batch)  # long texts: all hit seq
    dataset = encode(tokenizer, rows["text"].tolist(), rows["label"].tolist(), seq)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    if private:
        from secure_ft.privacy.engine import PrivateEngine

        settings = PrivacyConfig(noise_multiplier=1.0, target_epsilon=None, grad_sample_mode=mode,
                                 max_physical_batch_size=batch * 2)
        engine = PrivateEngine(settings, dataset_size=len(dataset), transfer=transfer)
    else:
        engine = TrainingEngine(1.0)
    from secure_ft.training.central_run import spend_recorded

    # a measurement on the data spends its budget like any run: recorded in its privacy budget ledger
    with spend_recorded(config, engine, fingerprint=splits.fingerprint, dataset_size=len(dataset),
                        run=f"bench/dp_overhead {transfer} {'dp ' + mode if private else 'plain'}", kind="bench"):
        prepared = engine.attach(model, optimizer, loader, epochs=1)
        engine.begin_epoch(prepared, 1, seed=0)
        durations, examples = [], []
        started = time.perf_counter()
        with engine.physical_batches(prepared) as batches:
            for batch_tensors in batches:
                batch_tensors = list(batch_tensors)
                if len(batch_tensors[-1]):
                    loss = prepared.criterion(forward_logits(prepared.model, batch_tensors), batch_tensors[-1])
                    loss.backward()
                engine.before_step(prepared)
                prepared.optimizer.step()
                prepared.optimizer.zero_grad(set_to_none=True)
                examples.append(len(batch_tensors[-1]))
                if not engine.step_taken(prepared):
                    continue
                durations.append(time.perf_counter() - started)
                started = time.perf_counter()
                if len(durations) > steps:
                    break
    timed = durations[1:]  # the first step warms up allocators and kernels
    trainable, total = trainable_parameter_count(engine.unwrap(prepared.model))
    return {"seconds_per_step": sum(timed) / len(timed), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "trainable": trainable, "examples_per_step": sum(examples[-len(timed):]) / len(timed) if private else batch,
            "grad_sample_mode": getattr(engine, "grad_sample_mode", None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated transfer modes to run (full,lora)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        transfer, private, mode = json.loads(args.worker)
        print(json.dumps(measure(transfer, private, mode, args.steps, args.seq, args.batch, args.threads)))
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wanted = set(args.only.split(",")) if args.only else {"full", "lora"}
    results = []
    for name, transfer, private, mode in CONFIGS:
        if transfer not in wanted:
            continue
        command = [sys.executable, __file__, "--worker", json.dumps([transfer, private, mode]),
                   "--steps", str(args.steps), "--seq", str(args.seq), "--batch", str(args.batch),
                   "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            print(f"{name} / {transfer}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append((name, transfer, result))
        print(f"  measured {name:12s} {transfer:5s}: {result['seconds_per_step']:.2f} s/step, "
              f"{result['peak_rss_gb']:.2f} GB", file=sys.stderr)

    print(f"\nDP overhead, default model, sequence {args.seq}, logical batch {args.batch}, {args.threads} threads, "
          f"{args.steps} timed steps each")
    print(f"{'config':16s} {'transfer':8s} {'trainable':>10s} {'s/step':>8s} {'x time':>7s} {'peak RSS':>9s} {'x mem':>6s}")
    baselines = {transfer: result for name, transfer, result in results if name == "non-private"}
    for name, transfer, result in results:
        base = baselines[transfer]
        print(f"{name:16s} {transfer:8s} {result['trainable']:>10,d} {result['seconds_per_step']:>8.2f} "
              f"{result['seconds_per_step'] / base['seconds_per_step']:>6.2f}x {result['peak_rss_gb']:>7.2f}GB "
              f"{result['peak_rss_gb'] / base['peak_rss_gb']:>5.2f}x")
    if "full" in baselines and "lora" in baselines:
        lora_dp = [r for n, t, r in results if t == "lora" and n != "non-private"]
        fastest = min(lora_dp, key=lambda r: r["seconds_per_step"])
        print(f"\nfastest DP + LoRA vs non-private full fine-tuning: "
              f"{fastest['seconds_per_step'] / baselines['full']['seconds_per_step']:.2f}x time, "
              f"{fastest['peak_rss_gb'] / baselines['full']['peak_rss_gb']:.2f}x memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
