"""The frozen encoder's speed on torch and ONNX Runtime (fp32, int8), and whether the probe's predictions agree.

    .venv/bin/python bench/encoder.py [--seconds 3] [--copies 0] [--skip-agreement]

Throughput: texts per second of the default encoder (all-MiniLM-L6-v2 with the probe's
mean-normalised pooling) at batch 1, 16 and 64 and lengths 64 and 128 tokens (real CFPB
complaints, truncated / padded to exactly that many tokens), on torch, on the ONNX Runtime graph
the probe ships (`secure_ft.text.onnx_encoder`, fp32) and on its dynamic int8 quantization. Each
setting runs one untimed warm-up pass, then passes until `--seconds` have elapsed (at least 2).
All backends use the same number of threads (torch's default: the cores). Ratios are to torch in
the same run.

Agreement: the default run (``secure-ft run``'s config: the built-in CFPB demo, DP, fixed probe
recipe) is trained once per backend (`--copies` augmentation copies per example; 0 by default
to keep the bench short — the default run uses 4), and each model folder is loaded the way the
audits load it (`secure_ft.text.text_classifier.TextClassifier`: the graph for ONNX) to predict the
test split. Reported: label equality with the torch model (target ≥ 99.5 %), the largest
difference of any class probability (tolerance 0.01), and each model's accuracy and macro-F1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

BATCHES = (1, 16, 64)
LENGTHS = (64, 128)
LABEL_AGREEMENT_TARGET = 0.995
PROBABILITY_TOLERANCE = 0.01
THROUGHPUT_TARGET = 2.0  # ONNX Runtime / torch at batch 64, length 64


def throughput(seconds: float) -> list[dict]:
    import torch

    from secure_ft.records.config import ModelConfig, RunConfig
    from secure_ft.records.data import load_splits
    from secure_ft.text.models import load_base_model
    from secure_ft.text.onnx_encoder import OnnxEncoder
    from secure_ft.training.probe import encoder_graph_folder, torch_encoder

    config = RunConfig()
    splits = load_splits(config.data, config.seed)
    texts = splits.train.sort_values("text", key=lambda s: -s.str.len())["text"].head(64).tolist()  # all ≥ 128 tokens
    model_config = ModelConfig(transfer="probe", max_length=max(LENGTHS))
    model, tokenizer = load_base_model(model_config, splits.label_names)
    model.eval()
    backends = {"torch": torch_encoder(model)}
    for quantize in ("none", "int8"):
        graph = encoder_graph_folder(model, tokenizer, model_config.model_copy(update={"quantize": quantize,
                                                                                       "encoder_backend": "onnx"}))
        backends["onnx fp32" if quantize == "none" else "onnx int8"] = OnnxEncoder.from_folder(graph, device="cpu")
    rows = []
    for length in LENGTHS:
        for batch_size in BATCHES:
            batch = tokenizer(texts[:batch_size], truncation=True, max_length=length, padding="max_length",
                              return_tensors="pt")
            for name, encoder in backends.items():
                with torch.inference_mode():
                    encoder(**batch)  # warm-up
                    passes, started = 0, time.perf_counter()
                    while passes < 2 or time.perf_counter() - started < seconds:
                        encoder(**batch)
                        passes += 1
                    elapsed = time.perf_counter() - started
                rows.append({"backend": name, "batch": batch_size, "length": length,
                             "texts_per_s": passes * batch_size / elapsed})
                print(f"  {name:9s} batch {batch_size:3d} length {length:3d}: "
                      f"{rows[-1]['texts_per_s']:8.1f} texts/s", flush=True)
    return rows


def agreement(copies: int) -> dict:
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from secure_ft.records.config import RunConfig
    from secure_ft.text.text_classifier import TextClassifier
    from secure_ft.training.central_run import train_run

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as scratch:
        for name, backend, quantize in (("torch", "torch", "none"), ("onnx fp32", "onnx", "none"),
                                        ("onnx int8", "onnx", "int8")):
            config = RunConfig()
            config.model = config.model.model_copy(update={"transfer": "probe", "encoder_backend": backend,
                                                           "quantize": quantize})
            config.training.robustness = config.training.robustness.model_copy(
                update={"augmentation_copies": copies})
            started = time.perf_counter()
            trained = train_run(config, output_dir=Path(scratch) / name.replace(" ", "-"), progress=False)
            train_seconds = time.perf_counter() - started
            classifier = TextClassifier.load(trained.model_dir, max_length=trained_max_length(trained))
            test = trained.splits.test
            probabilities = classifier.predict_proba(test["text"].tolist())
            labels = test["label"].astype(int).to_numpy()
            predicted = probabilities.argmax(axis=1)
            results[name] = {"probabilities": probabilities, "predicted": predicted,
                             "accuracy": accuracy_score(labels, predicted),
                             "macro_f1": f1_score(labels, predicted, average="macro"), "train_seconds": train_seconds}
            print(f"  {name}: trained in {train_seconds:.0f} s; test accuracy {results[name]['accuracy']:.3f}, "
                  f"macro-F1 {results[name]['macro_f1']:.3f}", flush=True)
    reference = results["torch"]
    for name, result in results.items():
        result["label_agreement"] = float(np.mean(result["predicted"] == reference["predicted"]))
        result["max_probability_difference"] = float(np.abs(result["probabilities"] - reference["probabilities"]).max())
    return results


def trained_max_length(trained) -> int:
    from secure_ft.records.run_directory import RunDirectory

    return RunDirectory(trained.run_dir).read_config().model.max_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per setting")
    parser.add_argument("--copies", type=int, default=0, help="augmentation copies per example in the agreement runs")
    parser.add_argument("--skip-agreement", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"threads: {torch.get_num_threads()} (torch and ONNX Runtime alike)\nthroughput:", flush=True)
    rows = throughput(args.seconds)
    base = {(row["batch"], row["length"]): row["texts_per_s"] for row in rows if row["backend"] == "torch"}
    print("\n| backend | length | batch | texts/s | × torch |\n|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["length"], r["batch"], r["backend"])):
        ratio = row["texts_per_s"] / base[(row["batch"], row["length"])]
        print(f"| {row['backend']} | {row['length']} | {row['batch']} | {row['texts_per_s']:.1f} | {ratio:.2f} |")
    for name in ("onnx fp32", "onnx int8"):
        ratio = next(r["texts_per_s"] for r in rows if r["backend"] == name and r["batch"] == 64
                     and r["length"] == 64) / base[(64, 64)]
        print(f"target: {name} ≥ {THROUGHPUT_TARGET}× torch at batch 64, length 64: {ratio:.2f}× "
              f"{'met' if ratio >= THROUGHPUT_TARGET else 'NOT met'}")
    if args.skip_agreement:
        return
    print(f"\nagreement (default run, {args.copies} augmentation copies, one model per backend):", flush=True)
    results = agreement(args.copies)
    print("\n| backend | labels = torch | max |Δp| | accuracy | macro-F1 | training s |\n|---|---|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['label_agreement']:.4f} | {result['max_probability_difference']:.4f} | "
              f"{result['accuracy']:.3f} | {result['macro_f1']:.3f} | {result['train_seconds']:.0f} |")
    for name in ("onnx fp32", "onnx int8"):
        result = results[name]
        holds = (result["label_agreement"] >= LABEL_AGREEMENT_TARGET
                 and result["max_probability_difference"] <= PROBABILITY_TOLERANCE)
        print(f"agreement {name}: labels {result['label_agreement']:.2%} (≥ {LABEL_AGREEMENT_TARGET:.1%}), "
              f"probabilities within {PROBABILITY_TOLERANCE}: {'holds' if holds else 'does NOT hold'}")


if __name__ == "__main__":
    main()
