"""Serving throughput and latency: dynamic batching against one request per forward pass.

Starts ``secure-ft serve`` twice on loopback ports: the baseline with ``--max-batch-size 1``
(every request its own forward pass) and the batched server, same model, same threads. Both
are loaded by 1, 4 and 16 closed-loop clients (aiohttp, cheap on the CPU it shares with the
servers) sending one real complaint per request; each level's time is cut into slices that
alternate between the two servers, so a busy machine's drifting load hits both alike. The
table gives requests/second, p50/p95/p99 latency, texts per forward pass and the ratios
batched / baseline; below it, the same model's forward passes alone, in-process, one text
against 16 per pass: the most batching can give on this machine. Start-up (process start to
ready, verification included) is timed too.

    python bench/serve.py                        # the packaged default encoder, bundled here
    python bench/serve.py --bundle B --public-key K
    python bench/serve.py --model-dir RUN/model  # any classifier / encoder folder
    python bench/serve.py --compare-backends     # batched, encoder on torch vs on ONNX Runtime

Without ``--bundle`` the bench builds a bundle around the model with the test suite's
synthetic passing evidence (``tests/fake_run.py``): fine for timing, meaningless as an audit.
Targets: at 16 clients ≥ 2× baseline throughput; at 4 clients batched p95 ≤ 2× baseline p50;
start-up ≤ 5 s. Needs the ``bench`` extra (aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the repo's package and the test suite's run builder


def build_backend_bundles(model_dir: str, root: Path) -> tuple[Path, Path, Path]:
    """Two signed bundles of one probe-style classifier (mean-normalised pooling, same head): its encoder on
    torch, and on the exported ONNX graph (`secure_ft.text.onnx_encoder`), with the same synthetic evidence."""
    from fake_run import LABELS, make_run
    from secure_ft.records.config import ModelConfig
    from secure_ft.release.export import export_bundle
    from secure_ft.release.keys import default_key_paths
    from secure_ft.text.models import load_base_model, save_trained_model

    os.environ["SECURE_FT_CONFIG_DIR"] = str(root / "keys")  # a throw-away gate key, never the user's own
    model, tokenizer = load_base_model(ModelConfig(name_or_path=model_dir, transfer="probe"), LABELS)
    save_trained_model(model, tokenizer, root / "classifier")
    bundles = []
    for name, graph in (("torch", False), ("onnx", True)):
        run = make_run(root / name, model_dir=root / "classifier", onnx_encoder=graph)
        bundles.append(export_bundle(run.run_dir, root / name / "bundle"))
    return bundles[0], bundles[1], default_key_paths()[1]


def build_bundle(model_dir: str, root: Path) -> tuple[Path, Path]:
    """A signed bundle of `model_dir` (given a fresh 3-class head if it has none) with synthetic evidence."""
    from fake_run import LABELS, make_run
    from secure_ft.records.config import ModelConfig
    from secure_ft.release.export import export_bundle
    from secure_ft.release.keys import default_key_paths
    from secure_ft.text.models import load_base_model, save_trained_model

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


async def load(url: str, texts: list[str], clients: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (s) of what `clients` closed-loop clients completed, and the wall time until the last reply.

    aiohttp: about 0.2 ms of client CPU per request against httpx's 2.3 ms at 16 clients, which on
    a 2-core machine would otherwise be taken from the server being measured.
    """
    import aiohttp

    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds

    async def client_loop(session, offset):
        index = offset
        while time.perf_counter() < stop_at:
            begun = time.perf_counter()
            async with session.post("/predict", json={"texts": [texts[index % len(texts)]]}) as reply:
                reply.raise_for_status()
                await reply.read()
            latencies.append(time.perf_counter() - begun)
            index += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client_loop(session, offset) for offset in range(clients)))
    return latencies, time.perf_counter() - started


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(bundle: Path, public_key: Path | None, server_args: list[str], log_dir: Path, device: str):
    """A ready server and its start-up times: process start → ready, verification, imports, model load."""
    from serve_helpers import ServerProcess

    args = [*server_args, "--max-texts", "64"] + (["--public-key", str(public_key)] if public_key else [])
    server = ServerProcess(bundle, args, log_dir / f"serve-{len(list(log_dir.iterdir()))}.log", device=device)
    try:
        server.wait_ready(timeout=180)
    except BaseException:
        server.stop()
        raise
    startup = time.monotonic() - server.started
    cpu = process_cpu_seconds(server.process.pid)
    memory = process_memory_mib(server.process.pid)
    timing = re.search(r"verified in ([0-9.]+) s .*imported in ([0-9.]+) s; model loaded on \S+ in ([0-9.]+) s",
                       server.output)
    values = [float(group) for group in timing.groups()] if timing else [float("nan")] * 3
    device = re.search(r"model loaded on (\S+)", server.output)
    return server, {**dict(zip(("startup_s", "verify_s", "imports_s", "load_s"), [startup, *values])),
                    "cpu_s": cpu, **memory, "device": device.group(1) if device else device}


def process_memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process now and at its peak (VmRSS, VmHWM), in MiB (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"rss_mib": float("nan"), "peak_rss_mib": float("nan")}
    kib = {key: float(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "VmHWM")}
    return {"rss_mib": kib["VmRSS"] / 1024, "peak_rss_mib": kib["VmHWM"] / 1024}


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: its start-up's cost without other processes' load."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # not Linux
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forward_passes(url: str) -> tuple[float, float]:
    """(forward passes, texts) the server has run so far, from its Prometheus metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    count, total = (float(re.search(rf"^secure_ft_batch_size_{name} (\S+)$", text, re.M).group(1))
                    for name in ("count", "sum"))
    return count, total


def measure(servers: dict, texts: list[str], clients: int, seconds: float, rounds: int) -> dict:
    """Each server under the same load, interleaved: `rounds` slices each, the order alternating.

    A shared machine's load drifts; slicing and alternating gives both servers the same drift.
    """
    latencies = {name: [] for name in servers}
    elapsed = dict.fromkeys(servers, 0.0)
    passes = {name: [0.0, 0.0] for name in servers}  # forward passes, texts
    for round_index in range(rounds):
        names = list(servers) if round_index % 2 == 0 else list(reversed(servers))
        for name in names:
            before = forward_passes(servers[name].url)
            done, took = asyncio.run(load(servers[name].url, texts, clients, seconds / rounds))
            after = forward_passes(servers[name].url)
            latencies[name] += done
            elapsed[name] += took
            passes[name] = [total + a - b for total, a, b in zip(passes[name], after, before)]
    return {name: {"rps": len(latencies[name]) / elapsed[name], "p50": percentile(latencies[name], 50),
                   "p95": percentile(latencies[name], 95), "p99": percentile(latencies[name], 99),
                   "batch": passes[name][1] / max(passes[name][0], 1)} for name in servers}


def forward_ceiling(bundle: Path, public_key: Path | None, texts: list[str], threads: int, device: str,
                    seconds: float) -> float:
    """In this process, no HTTP: texts/s in forward passes of 16 over texts/s one at a time.

    What batching can give at most with this model, machine and thread count; the servers' ratio
    at 16 clients stays below it by the per-request work around the forward pass.
    """
    import torch

    from secure_ft.serving.bundle_loader import load_verified_bundle
    from secure_ft.serving.classifier import BundleClassifier

    torch.set_num_threads(threads)
    classifier = BundleClassifier.from_bundle(load_verified_bundle(bundle, public_key), device)
    rates = []
    for size in (1, 16, 1, 16):  # interleaved, as the servers are
        classifier.probabilities(texts[:size])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 4:
            classifier.probabilities(texts[done % 128:done % 128 + size])
            done += size
        rates.append(done / (time.perf_counter() - started))
    return (rates[1] + rates[3]) / (rates[0] + rates[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="an exported bundle (default: build one around --model-dir)")
    parser.add_argument("--public-key", help="the bundle signer's public key")
    parser.add_argument("--model-dir", default="default", help="model folder to bundle (default: the packaged encoder)")
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per server and concurrency level")
    parser.add_argument("--rounds", type=int, default=2,
                        help="slices the --seconds are cut into, alternating the servers (default 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--texts", nargs="+", choices=["short", "narratives"], default=["short", "narratives"],
                        help="short: first 16 words of each complaint; narratives: whole (128 tokens read)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--compare-backends", action="store_true",
                        help="instead of batched vs unbatched: the batched server with the encoder on torch "
                             "(baseline) against the same probe's ONNX Runtime graph (target ≥ 1.5× at 16 clients)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="server torch threads (default 1: the load generator needs the other core of a 2-core "
                             "machine, and oversubscribed OpenMP threads spin-wait)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temp:
        root = Path(temp)
        batched_args = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
        plan = None
        if args.compare_backends:
            print(f"building torch and ONNX bundles around {args.model_dir} (synthetic evidence) ...", flush=True)
            torch_bundle, bundle, public_key = build_backend_bundles(args.model_dir, root)
            plan = (("baseline", torch_bundle, batched_args), ("batched", bundle, batched_args))
        elif args.bundle:
            bundle, public_key = Path(args.bundle), Path(args.public_key) if args.public_key else None
        else:
            print(f"building a bundle around {args.model_dir} (synthetic evidence, for timing only) ...", flush=True)
            bundle, public_key = build_bundle(args.model_dir, root)
        (root / "logs").mkdir()
        threads = ["--threads", str(args.threads)]
        servers, started, results = {}, {}, {}
        try:
            plan = plan or (("baseline", bundle, ["--max-batch-size", "1", "--max-wait-ms", "0"]),
                            ("batched", bundle, batched_args))
            for name, served_bundle, server_args in plan:
                servers[name], started[name] = start_server(served_bundle, public_key, [*server_args, *threads],
                                                            root / "logs", args.device)
            for kind in args.texts:
                texts = bench_texts(kind)
                for server in servers.values():
                    asyncio.run(load(server.url, texts, 4, 1.0))  # warm-up: first passes, allocator, connections
                for clients in args.clients:
                    measured = measure(servers, texts, clients, args.seconds, args.rounds)
                    for name, result in measured.items():
                        results[name, kind, clients] = result
                        print(f"  {kind:>10} {clients:>2} clients {name:>8}: {result['rps']:.1f} req/s, "
                              f"{result['batch']:.1f} texts per forward pass", flush=True)
        finally:
            for server in servers.values():
                server.stop()
        ceilings = {kind: forward_ceiling(bundle, public_key, bench_texts(kind), args.threads,
                                          started["batched"]["device"], 4.0)
                    for kind in args.texts}
    print_table(results, started, ceilings, args)
    return 0


def print_table(results: dict, started: dict, ceilings: dict, args) -> None:
    if args.compare_backends:
        print("\nbackends compared: 'base' = batched server, encoder on torch; 'batch' = the same batched server "
              "and probe, encoder on the ONNX Runtime graph")
    print(f"\nserving bench: {args.seconds:g} s per server and level in {args.rounds} alternating slices, one text "
          f"per request; batched = --max-batch-size {args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}; "
          f"baseline = --max-batch-size 1; --threads {args.threads}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    checks = []
    for kind in args.texts:
        print(f"\ntexts: {kind}")
        print(f"{'clients':>7} | {'base req/s':>10} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} | {'batch req/s':>11} "
              f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'texts/pass':>10} | {'× req/s':>7} {'× p95':>6}")
        for clients in args.clients:
            b, d = results["baseline", kind, clients], results["batched", kind, clients]
            print(f"{clients:>7} | {b['rps']:>10.1f} {b['p50'] * 1e3:>7.1f} {b['p95'] * 1e3:>7.1f} "
                  f"{b['p99'] * 1e3:>7.1f} | {d['rps']:>11.1f} {d['p50'] * 1e3:>7.1f} {d['p95'] * 1e3:>7.1f} "
                  f"{d['p99'] * 1e3:>7.1f} {d['batch']:>10.1f} | {d['rps'] / b['rps']:>7.2f} "
                  f"{d['p95'] / b['p95']:>6.2f}")
        print(f"forward passes alone, in-process: 16 texts per pass give {ceilings[kind]:.2f}× the texts/s of one "
              "per pass (the most batching can give here)")
        if 16 in args.clients and args.compare_backends:
            ratio = results["batched", kind, 16]["rps"] / results["baseline", kind, 16]["rps"]
            checks.append(f"{kind}: 16 clients, ONNX Runtime {ratio:.2f}× torch's batched throughput (target ≥ 1.5): "
                          f"{'met' if ratio >= 1.5 else 'MISSED'}")
        elif 16 in args.clients:
            ratio = results["batched", kind, 16]["rps"] / results["baseline", kind, 16]["rps"]
            checks.append(f"{kind}: 16 clients throughput {ratio:.2f}× baseline (target ≥ 2; in-process ceiling "
                          f"{ceilings[kind]:.2f}×): {'met' if ratio >= 2 else 'MISSED'}")
        if 4 in args.clients:
            ratio = results["batched", kind, 4]["p95"] / results["baseline", kind, 4]["p50"]
            checks.append(f"{kind}: 4 clients p95 = {ratio:.2f}× baseline p50 (target ≤ 2): "
                          f"{'met' if ratio <= 2 else 'MISSED'}")
    print()
    for name, run in started.items():
        print(f"start-up {name}: {run['startup_s']:.2f} s from process start to ready, of which verification "
              f"{run['verify_s']:.2f} s, importing torch and transformers {run['imports_s']:.2f} s, model load "
              f"{run['load_s']:.2f} s; {run['cpu_s']:.2f} s of CPU time (what it costs on an idle core); resident "
              f"memory when ready {run['rss_mib']:.0f} MiB (peak {run['peak_rss_mib']:.0f} MiB)")
    startup = max(run["startup_s"] for run in started.values())
    checks.append(f"start-up {startup:.2f} s (slower of the two; target ≤ 5): {'met' if startup <= 5 else 'MISSED'}")
    print("\n".join(checks))


if __name__ == "__main__":
    sys.exit(main())
