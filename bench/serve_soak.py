"""Serving under abuse: slow and half-open clients next to normal ones, on loopback only.

Runs 16 normal closed-loop clients (one short complaint per ``POST /predict``) against a
``secure-ft serve`` process twice: alone, and next to SLOW abusive clients that reconnect
whenever the server closes them — a third half-open (connect, send nothing), a third sending
request headers at one byte a second, a third sending complete headers and then the body at
one byte a second. It reports the normal clients' p50/p95 latency and failures in both
phases, the connections the server closed and why, and the server's open file descriptors
(most seen while under attack, and at the end once the attackers stopped).

    python bench/serve_soak.py --slow 500 --seconds 20          # builds a tiny bundle
    python bench/serve_soak.py --bundle B --public-key K --slow 500

Target: under attack, every normal request succeeds and the normal p95 is at most
2 × its p95 alone + 0.25 s; open files stay below --max-connections + 64 and return to
their level before the attack. ``tests/test_serve_abuse.py`` runs a smaller soak.
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
sys.path[:0] = [str(REPO), str(REPO / "tests")]

NORMAL_TEXT = "I was charged a late fee on my credit card although the payment was on time"
KINDS = ("half_open", "slow_headers", "slow_body")


def open_files(pid: int) -> int:
    """Open file descriptors of process `pid` (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def normal_clients(url: str, clients: int, stop_at: float) -> tuple[list[float], int]:
    """Latencies of the requests `clients` closed-loop clients completed before `stop_at`, and failures."""
    import httpx

    latencies, failures = [], [0]

    async def loop(client):
        while time.monotonic() < stop_at:
            begun = time.perf_counter()
            try:
                reply = await client.post("/predict", json={"texts": [NORMAL_TEXT]})
                ok = reply.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - begun)
            else:
                failures[0] += 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(loop(client) for _ in range(clients)))
    return latencies, failures[0]


async def slow_client(host: str, port: int, kind: str, stop_at: float, stats: dict) -> None:
    """One abusive client of `kind`; reconnects each time the server closes it, until `stop_at`."""
    request = (b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
               b"Content-Length: 4096\r\n\r\n")
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_failures"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["connections"] += 1
        opened = time.monotonic()
        try:
            if kind == "slow_body":
                writer.write(request)
                await writer.drain()
            trickle = request if kind == "slow_headers" else b"{" + b" " * 4095
            for index in range(len(trickle)):
                if kind != "half_open":
                    writer.write(trickle[index:index + 1])
                    await writer.drain()
                left = stop_at - time.monotonic()
                if left <= 0:
                    break
                try:
                    if await asyncio.wait_for(reader.read(4096), min(1.0, left)) is not None:
                        stats["closed_after"].append(time.monotonic() - opened)  # the server answered or closed
                        break
                except asyncio.TimeoutError:
                    continue
        except (ConnectionError, OSError):
            stats["closed_after"].append(time.monotonic() - opened)
        finally:
            writer.close()


async def soak(url: str, pid: int, slow: int, normal: int, seconds: float) -> dict:
    """Normal clients next to `slow` abusive ones for `seconds`; latencies, failures and open files."""
    host, port = re.match(r"https?://([^:/]+):(\d+)", url).groups()
    stop_at = time.monotonic() + seconds
    stats = {"connections": 0, "connect_failures": 0, "closed_after": []}
    abusers = [asyncio.create_task(slow_client(host, int(port), KINDS[i % 3], stop_at, stats)) for i in range(slow)]
    most = [open_files(pid)]

    async def watch():
        while time.monotonic() < stop_at:
            most.append(open_files(pid))
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(min(2.0, seconds / 4) if slow else 0)  # let the attackers connect first
    latencies, failures = await normal_clients(url, normal, stop_at)
    await asyncio.gather(*abusers, watcher)
    closed = stats["closed_after"]
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "requests": len(latencies),
            "failures": failures, "slow_connections": stats["connections"],
            "slow_connect_failures": stats["connect_failures"], "most_open_files": max(most),
            "slowest_closed_s": max(closed) if closed else float("nan")}


def closed_connections(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {match[0]: float(match[1]) for match in
            re.findall(r'^secure_ft_connections_closed_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M)}


def run(url: str, pid: int, slow: int, normal: int, seconds: float) -> dict:
    """Both phases against a running server: alone, then under attack; plus open files after."""
    asyncio.run(normal_clients(url, 4, time.monotonic() + 1.0))  # warm-up
    before_files = open_files(pid)
    alone = asyncio.run(soak(url, pid, 0, normal, seconds))
    attacked = asyncio.run(soak(url, pid, slow, normal, seconds))
    time.sleep(1.0)  # the attackers have gone; their connections close
    return {"alone": alone, "attacked": attacked, "open_files_before": before_files,
            "open_files_after": open_files(pid), "closed": closed_connections(url)}


def report(result: dict, slow: int, normal: int, seconds: float, max_connections: int) -> list[str]:
    alone, attacked = result["alone"], result["attacked"]
    target = 2 * alone["p95"] + 0.25
    lines = [f"soak: {normal} normal clients for {seconds:g} s, alone and next to {slow} slow clients "
             f"(half-open, 1 byte/s headers, 1 byte/s body); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    for name, phase in (("alone", alone), ("attacked", attacked)):
        lines.append(f"  {name:>8}: {phase['requests']} requests, {phase['failures']} failed, p50 "
                     f"{phase['p50'] * 1e3:.0f} ms, p95 {phase['p95'] * 1e3:.0f} ms, most open files "
                     f"{phase['most_open_files']}")
    lines.append(f"  slow clients: {attacked['slow_connections']} connections, {attacked['slow_connect_failures']} "
                 f"refused at connect, slowest closed after {attacked['slowest_closed_s']:.1f} s; server closed "
                 f"{result['closed']}")
    lines.append(f"  open files: {result['open_files_before']} before, {result['open_files_after']} at the end")
    met = (attacked["failures"] == 0 and attacked["p95"] <= target
           and attacked["most_open_files"] <= max_connections + 64
           and result["open_files_after"] <= result["open_files_before"] + 8)
    lines.append(f"  target: no failures, p95 ≤ {target * 1e3:.0f} ms (2 × alone + 250 ms), open files ≤ "
                 f"{max_connections + 64} and back to their level: {'met' if met else 'MISSED'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="an exported bundle (default: a tiny synthetic one)")
    parser.add_argument("--public-key")
    parser.add_argument("--slow", type=int, default=500, help="abusive clients (default 500)")
    parser.add_argument("--normal", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="the server's --header-timeout/--body-timeout")
    parser.add_argument("--max-connections", type=int, default=1000)
    args = parser.parse_args()

    from serve_helpers import ServerProcess, signed_bundle

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as temp:
        root = Path(temp)
        os.environ.setdefault("SECURE_FT_CONFIG_DIR", str(root / "keys"))  # a throw-away key unless a bundle is given
        if args.bundle:
            bundle, public_key = Path(args.bundle), args.public_key
        else:
            signed = signed_bundle(root / "run")
            bundle, public_key = signed.bundle, signed.public_key
        server = ServerProcess(bundle, ["--public-key", str(public_key), "--threads", "1",
                                        "--header-timeout", str(args.timeout), "--body-timeout", str(args.timeout),
                                        "--max-connections", str(args.max_connections)], root / "serve.log")
        try:
            server.wait_ready(timeout=180)
            result = run(server.url, server.process.pid, args.slow, args.normal, args.seconds)
        finally:
            server.stop()
    print("\n".join(report(result, args.slow, args.normal, args.seconds, args.max_connections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
