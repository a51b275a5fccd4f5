"""The deployment path end to end on loopback: CA + TLS, SuperNode authentication, 2 sites, 2 rounds.

Uses the scripts in deploy/ exactly as a coordinator and two sites would: make_certs.py,
start_superlink.sh, register_sites.sh, start_supernode.sh, launch_run.sh (flwr run). A third
SuperNode with a key that was never registered must be refused. Every process started here is
stopped by its process group id in a finally block, and the test checks none survives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from toy_data import VOCAB, toy_frame

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
FLOWER_PROCESSES = "flower-superlink|flower-supernode|flower-superexec|flwr-serverapp|flwr-clientapp|raylet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_processes() -> set[str]:
    found = subprocess.run(["pgrep", "-af", FLOWER_PROCESSES], capture_output=True, text=True).stdout
    # a zombie (<defunct>) has exited already; it only waits for its (re-)parent to reap it
    return {line for line in found.splitlines() if "pgrep" not in line and "<defunct>" not in line}


class Processes:
    """Processes started by this test, each in its own session; stopped by process group id."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.started = env, logs, []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.logs)
        self.started.append((name, process, log))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """SIGTERM every started process and its descendants (Flower detaches some), then SIGKILL leftovers."""
        tree = set()
        for _, process, _ in self.started:
            tree |= {process.pid} | descendants(process.pid)
        for _, process, _ in reversed(self.started):
            _signal(process.pid, signal.SIGTERM, group=True)
        for pid in tree:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process, log in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            log.close()
        while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
            time.sleep(0.2)
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        for _, process, _ in self.started:
            process.wait(timeout=10)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` in the parent tree (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the SuperLink exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tls_authenticated_deployment_trains_two_sites_and_refuses_an_unknown_one(tmp_path, tiny_model_dir):
    before = flower_processes()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(tmp_path / "flwr"),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DISABLE_USAGE_STATS": "1",
           "OMP_NUM_THREADS": "1"}
    pki, keys, logs = tmp_path / "pki", tmp_path / "keys", tmp_path / "logs"
    logs.mkdir()
    python = [sys.executable, str(DEPLOY / "make_certs.py")]
    for command in (["ca", "--out", str(pki)], ["server", "--out", str(pki)],
                    *(["site-key", "--out", str(keys), "--site", site] for site in ("site-a", "site-b", "intruder"))):
        result = run(python + command, env, 60)
        assert result.returncode == 0, result.stderr
    assert oct((keys / "site-a").stat().st_mode)[-3:] == "600"

    frame = toy_frame(rows_per_class=60, seed=3)
    (tmp_path / "site-a.csv").write_text(frame.iloc[:60].to_csv(index=False))
    (tmp_path / "site-b.csv").write_text(frame.iloc[60:120].to_csv(index=False))
    (tmp_path / "coordinator.csv").write_text(frame.iloc[120:].to_csv(index=False))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "data": {"source": str(tmp_path / "coordinator.csv"), "label_column": "product",
                 "group_columns": ["region"], "min_class_count": 5},
        "model": {"name_or_path": str(tiny_model_dir), "transfer": "lora", "max_length": 16},
        "training": {"batch_size": 16, "learning_rate": 0.01},
        "privacy": {"mode": "none"},
        "federated": {"num_sites": 2, "rounds": 2, "min_train_sites": 2, "min_available_sites": 2,
                      "federated_evaluation": False, "round_timeout_s": 240},
    }))

    port = free_port()
    address = f"127.0.0.1:{port}"
    processes = Processes(env, logs)
    try:
        superlink = processes.start("superlink", ["bash", str(DEPLOY / "start_superlink.sh"), "--pki", str(pki),
                                                  "--host", "127.0.0.1", "--port", str(port),
                                                  "--state", str(tmp_path / "superlink-state")])
        wait_for_port(port, superlink, 60)
        registered = None
        for _ in range(20):  # the HTTPS API may need a moment after the port opens
            registered = run(["bash", str(DEPLOY / "register_sites.sh"), "--superlink", address, "--ca",
                              str(pki / "ca.crt"), str(keys / "site-a.pub"), str(keys / "site-b.pub")], env, 60)
            if registered.returncode == 0:
                break
            time.sleep(1)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert registered.stdout.count("registered successfully") == 2, registered.stdout

        for index, site in enumerate(("site-a", "site-b", "intruder")):
            data = tmp_path / ("site-a.csv" if site == "intruder" else f"{site}.csv")
            processes.start(site, ["bash", str(DEPLOY / "start_supernode.sh"), "--superlink", address,
                                   "--ca", str(pki / "ca.crt"), "--key", str(keys / site), "--data", str(data),
                                   "--site", site, "--state", str(tmp_path / "state" / site),
                                   "--port", str(free_port())])

        intruder = next(process for name, process, _ in processes.started if name == "intruder")
        assert intruder.wait(timeout=90) != 0, "a SuperNode with an unregistered key must not stay connected"
        assert "Failed to activate SuperNode" in processes.log("intruder")
        assert "No SuperNode found with the given public key" in processes.log("superlink")

        launched = run(["bash", str(DEPLOY / "launch_run.sh"), "--superlink", address, "--ca", str(pki / "ca.crt"),
                        "--config", str(tmp_path / "run.yaml"), "--run-dir", str(tmp_path / "run")], env, 300)
        assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    finally:
        processes.stop_all()

    run_dir = tmp_path / "run"
    assert (run_dir / "model" / "model.safetensors").is_file(), launched.stdout[-3000:]
    assert json.loads((run_dir / "model" / "model_hash.json").read_text())["sha256"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [entry["round"] for entry in metrics["rounds"]] == [1, 2]
    assert all(entry["aggregated"] and entry["sites_accepted"] == 2 for entry in metrics["rounds"])
    federation = json.loads((run_dir / "federated.json").read_text())
    assert federation["mode"] == "deployment"
    assert sorted(site["name"] for site in federation["sites"]) == ["site-a", "site-b"]
    site_ledgers = list((tmp_path / "state" / "site-a").glob("run-*/ledger.jsonl"))
    assert len(site_ledgers) == 1 and len(site_ledgers[0].read_text().splitlines()) == 2
    assert not list((tmp_path / "state" / "intruder").glob("run-*")), "the refused site must never have trained"
    assert flower_processes() - before == set(), "a Flower process outlived the test"
