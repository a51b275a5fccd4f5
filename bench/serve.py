"""Serving throughput and latency: dynamic batching against one request per forward pass.

Starts ``secure-ft serve`` twice on a loopback port, one after the other: the baseline with
``--max-batch-size 1`` (every request its own forward pass) and the batched server. Each is
loaded by 1, 4 and 16 closed-loop clients sending one real complaint narrative per request
for a fixed time; the table gives requests/second and p50/p95/p99 latency and the ratios
batched / baseline. Start-up (process start to ready, verification included) is timed too.

    python bench/serve.py                        # the packaged default encoder, bundled here
    python bench/serve.py --bundle B --public-key K
    python bench/serve.py --model-dir RUN/model  # any classifier / encoder folder

Without ``--bundle`` the bench builds a bundle around the model with the test suite's
synthetic passing evidence (``tests/fake_run.py``): fine for timing, meaningless as an audit.
Targets: at 16 clients ≥ 2× baseline throughput; at 4 clients batched p95 ≤ 2× baseline p50;
start-up ≤ 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the repo's package and the test suite's run builder


def build_bundle(model_dir: str, root: Path) -> tuple[Path, Path]:
    """A signed bundle of `model_dir` (given a fresh 3-class head if it has none) with synthetic evidence."""
    from fake_run import LABELS, make_run
    from secure_ft.config import ModelConfig
    import os

    from secure_ft.export import export_bundle
    from secure_ft.keys import default_key_paths
    from secure_ft.models import load_base_model, save_trained_model

    os.environ["SECURE_FT_CONFIG_DIR"] = str(root / "keys")  # a throw-away gate key, never the user's own
    model, tokenizer = load_base_model(ModelConfig(name_or_path=model_dir), LABELS)
    save_trained_model(model, tokenizer, root / "classifier")
    run = make_run(root, model_dir=root / "classifier")
    return export_bundle(run.run_dir, root / "bundle"), default_key_paths()[1]


def bench_texts(kind: str, count: int = 256) -> list[str]:
    """Real complaint narratives: whole (the model reads their first 128 tokens) or their first 16 words."""
    import pandas as pd

    frame = pd.read_csv(REPO / "secure_ft" / "demo_data" / "cfpb" / "cfpb_narratives.csv", usecols=["text"])
    texts = [text for text in frame["text"].astype(str).tolist() if text.strip()][:count]
    if kind == "short":
        return [" ".join(text.split()[:16]) for text in texts]
    return [text[:1000] for text in texts]  # 1,000 characters hold the 128 tokens read; stays under --max-chars


async def load(url: str, texts: list[str], clients: int, seconds: float) -> list[float]:
    """Latencies (s) of the requests `clients` closed-loop clients completed within `seconds`."""
    import httpx

    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client_loop(client, offset):
        index = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            reply = await client.post("/predict", json={"texts": [texts[index % len(texts)]]})
            reply.raise_for_status()
            latencies.append(time.perf_counter() - started)
            index += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, offset) for offset in range(clients)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(bundle: Path, public_key: Path | None, server_args: list[str], log_dir: Path, device: str):
    """A ready server and its start-up times: process start → ready, verification, model load."""
    from serve_helpers import ServerProcess

    args = [*server_args, "--max-texts", "64"] + (["--public-key", str(public_key)] if public_key else [])
    server = ServerProcess(bundle, args, log_dir / f"serve-{len(list(log_dir.iterdir()))}.log", device=device)
    try:
        server.wait_ready(timeout=180)
    except BaseException:
        server.stop()
        raise
    startup = time.monotonic() - server.started
    timing = re.search(r"imports took ([0-9.]+) s; .* verified in ([0-9.]+) s .*model loaded on \S+ in ([0-9.]+) s",
                       server.output)
    values = [float(group) for group in timing.groups()] if timing else [float("nan")] * 3
    return server, dict(zip(("startup_s", "imports_s", "verify_s", "load_s"), [startup, *values]))


def measure(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    latencies = asyncio.run(load(url, texts, clients, seconds))
    return {"rps": len(latencies) / seconds, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="an exported bundle (default: build one around --model-dir)")
    parser.add_argument("--public-key", help="the bundle signer's public key")
    parser.add_argument("--model-dir", default="default", help="model folder to bundle (default: the packaged encoder)")
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--texts", nargs="+", choices=["short", "narratives"], default=["short", "narratives"],
                        help="short: first 16 words of each complaint; narratives: whole (128 tokens read)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (default 1: the load generator needs the other core of a 2-core "
                             "machine, and oversubscribed OpenMP threads spin-wait)")
    args = parser.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temp:
        root = Path(temp)
        if args.bundle:
            bundle, public_key = Path(args.bundle), Path(args.public_key) if args.public_key else None
        else:
            print(f"building a bundle around {args.model_dir} (synthetic evidence, for timing only) ...", flush=True)
            bundle, public_key = build_bundle(args.model_dir, root)
        (root / "logs").mkdir()
        threads = ["--threads", str(args.threads)]
        servers, started = {}, {}
        try:
            for name, server_args in (("baseline", ["--max-batch-size", "1", "--max-wait-ms", "0"]),
                                      ("batched", ["--max-batch-size", str(args.max_batch_size),
                                                   "--max-wait-ms", str(args.max_wait_ms)])):
                servers[name], started[name] = start_server(bundle, public_key, [*server_args, *threads],
                                                            root / "logs", args.device)
            results = {}
            for kind in args.texts:
                texts = bench_texts(kind)
                for name, server in servers.items():
                    asyncio.run(load(server.url, texts, 4, 1.0))  # warm-up: first passes, allocator, connections
                for clients in args.clients:  # the two servers back to back: a busy machine drifts slowly
                    for name, server in servers.items():
                        results[name, kind, clients] = measure(server.url, texts, clients, args.seconds)
                        print(f"  {kind:>10} {clients:>2} clients {name:>8}: "
                              f"{results[name, kind, clients]['rps']:.1f} req/s", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print_table(results, started, args)
    return 0


def print_table(results: dict, started: dict, args) -> None:
    print(f"\nserving bench: {args.seconds:g} s per level, one text per request; batched = --max-batch-size "
          f"{args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}; baseline = --max-batch-size 1; "
          f"--threads {args.threads}")
    checks = []
    for kind in args.texts:
        print(f"\ntexts: {kind}")
        print(f"{'clients':>7} | {'base req/s':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} | {'batch req/s':>11} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} | {'× req/s':>7} {'× p95':>6}")
        for clients in args.clients:
            b, d = results["baseline", kind, clients], results["batched", kind, clients]
            print(f"{clients:>7} | {b['rps']:>10.1f} {b['p50'] * 1e3:>7.1f} {b['p95'] * 1e3:>7.1f} "
                  f"{b['p99'] * 1e3:>7.1f} | {d['rps']:>11.1f} {d['p50'] * 1e3:>7.1f} {d['p95'] * 1e3:>7.1f} "
                  f"{d['p99'] * 1e3:>7.1f} | {d['rps'] / b['rps']:>7.2f} {d['p95'] / b['p95']:>6.2f}")
        if 16 in args.clients:
            ratio = results["batched", kind, 16]["rps"] / results["baseline", kind, 16]["rps"]
            checks.append(f"{kind}: 16 clients throughput {ratio:.2f}× baseline (target ≥ 2): "
                          f"{'met' if ratio >= 2 else 'MISSED'}")
        if 4 in args.clients:
            ratio = results["batched", kind, 4]["p95"] / results["baseline", kind, 4]["p50"]
            checks.append(f"{kind}: 4 clients p95 = {ratio:.2f}× baseline p50 (target ≤ 2): "
                          f"{'met' if ratio <= 2 else 'MISSED'}")
    print()
    for name, run in started.items():
        print(f"start-up {name}: {run['startup_s']:.2f} s from process start to ready, of which imports "
              f"(torch, transformers) {run['imports_s']:.2f} s, verification {run['verify_s']:.2f} s, "
              f"model load and app {run['load_s']:.2f} s")
    startup = max(run["startup_s"] for run in started.values())
    checks.append(f"start-up {startup:.2f} s (target ≤ 5): {'met' if startup <= 5 else 'MISSED'}")
    verify_load = max(run["verify_s"] + run["load_s"] for run in started.values())
    checks.append(f"verification + model load {verify_load:.2f} s (after imports; target ≤ 5): "
                  f"{'met' if verify_load <= 5 else 'MISSED'}")
    print("\n".join(checks))


if __name__ == "__main__":
    sys.exit(main())
