"""The deployment path end to end on loopback, as deploy/README.md tells a coordinator and two sites.

`secure-ft deploy certs|superlink|register|supernode|launch` (the kit shipped in the package),
two sites with site-level DP on their own files, then `secure-ft privacy`, `audit`, `export`
and `verify` on the coordinator's run directory. A node holding only ``ca.crt`` can neither
register a key nor list runs through the sites' address, and a SuperNode with an unregistered
key is refused before it starts (the front answers which site a key is registered as). Every process started here is stopped by its process group id in a finally
block, and the test checks none survives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from own_processes import marked_environment, own_processes
from toy_data import VOCAB, toy_frame

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "secure_ft.cli"]
FLOWER_PROCESSES = "flower-superlink|flower-supernode|flower-superexec|flwr-serverapp|flwr-clientapp|raylet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


POLICY = """name: deployed-test
required_audits: [performance, privacy]
performance:
  min_gain_over_majority: -1.0
privacy:
  require_dp: true
  max_epsilon: 50.0
"""


def rogue_is_refused(tmp_path: Path, env: dict[str, str], pki: Path, keys: Path, front: str) -> None:
    """A machine with only ca.crt, pointed at the sites' address: no registration, no run listing."""
    import httpx

    rogue_home = tmp_path / "rogue-flwr"
    rogue_home.mkdir()
    shutil.copy(pki / "ca.crt", rogue_home / "ca.crt")
    (rogue_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n[superlink.fed]\naddress = "{front}"\n'
        f'root-certificates = "{rogue_home / "ca.crt"}"\n')
    rogue_env = {**env, "FLWR_HOME": str(rogue_home)}
    registered = run([str(BIN / "flwr"), "supernode", "register", str(keys / "intruder.pub"), "fed"], rogue_env, 60)
    assert registered.returncode != 0 or "registered successfully" not in registered.stdout, registered.stdout
    listed = run([str(BIN / "flwr"), "ls", "fed", "--format", "json"], rogue_env, 60)
    assert listed.returncode != 0 or '"success": true' not in listed.stdout, listed.stdout
    with httpx.Client(verify=ssl.create_default_context(cafile=str(pki / "ca.crt")), timeout=30) as client:
        for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-nodes"):
            assert client.post(f"https://{front}{path}", content=b"").status_code == 403, path
        assert client.get(f"https://{front}/v1/fleet/get-run").status_code == 403  # only POSTs pass


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deployed_dp_run_is_audited_gated_and_exported_and_registration_needs_the_coordinator(tmp_path, tiny_model_dir,
                                                                                               monkeypatch):
    token = marked_environment(monkeypatch)  # every process started below inherits it through `env`
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "SECURE_FT_CONFIG_DIR": str(tmp_path / "cfg"),
           "OMP_NUM_THREADS": "1"}
    pki, keys, logs = tmp_path / "pki", tmp_path / "keys", tmp_path / "logs"
    logs.mkdir()
    for command in (["ca", "--out", str(pki)], ["server", "--out", str(pki)],
                    *(["site-key", "--out", str(keys), "--site", site] for site in ("site-a", "site-b", "intruder"))):
        result = run(CLI + ["deploy", "certs", *command], env, 60)
        assert result.returncode == 0, result.stderr
    assert oct((keys / "site-a").stat().st_mode)[-3:] == "600"

    frame = toy_frame(rows_per_class=60, seed=3)
    labels = sorted(frame["product"].unique())
    (tmp_path / "site-a.csv").write_text(frame.iloc[:60].to_csv(index=False))
    (tmp_path / "site-b.csv").write_text(frame.iloc[60:120].to_csv(index=False))
    (tmp_path / "coordinator.csv").write_text(frame.iloc[120:].to_csv(index=False))
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "mode": "federated",
        "data": {"source": str(tmp_path / "coordinator.csv"), "label_column": "product", "labels": labels,
                 "group_columns": ["region"], "min_class_count": 5},
        "model": {"name_or_path": str(tiny_model_dir), "transfer": "lora", "max_length": 16},
        "training": {"batch_size": 16, "learning_rate": 0.01},
        "privacy": {"mode": "dp", "target_epsilon": 8.0, "accountant": "rdp"},
        "federated": {"num_sites": 2, "rounds": 2, "min_train_sites": 2, "min_available_sites": 2,
                      "federated_evaluation": False, "round_timeout_s": 240},
        "audits": {"privacy": {"calibrated_attack": False, "n_boot": 0}},
    }))

    port, control_port = free_port(), free_port()
    front = f"127.0.0.1:{port}"
    state = tmp_path / "superlink-state"
    coordinator = ["--ca", str(pki / "ca.crt"), "--control-port", str(control_port)]
    processes = Processes(env, logs)
    run_dir = tmp_path / "run"
    try:
        superlink = processes.start("superlink", CLI + ["deploy", "superlink", "--pki", str(pki), "--host", "127.0.0.1",
                                                        "--port", str(port), "--control-port", str(control_port),
                                                        "--state", str(state)])
        wait_for_port(port, superlink, 120)
        rogue_is_refused(tmp_path, env, pki, keys, front)

        registered = run(CLI + ["deploy", "register", str(keys / "site-a.pub"), str(keys / "site-b.pub"),
                                "--state", str(state), *coordinator], env, 120)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert "registered site site-a" in registered.stdout and "registered site site-b" in registered.stdout
        listed = run(CLI + ["sites", "list", "--state", str(state), *coordinator], env, 60)
        assert listed.returncode == 0 and "site-a" in listed.stdout and "site-b" in listed.stdout, listed.stdout

        for site in ("site-a", "site-b", "intruder"):
            data = tmp_path / ("site-a.csv" if site == "intruder" else f"{site}.csv")
            processes.start(site, CLI + ["deploy", "supernode", "--superlink", front, "--ca", str(pki / "ca.crt"),
                                         "--key", str(keys / site), "--data", str(data), "--site", site,
                                         "--state", str(tmp_path / "state" / site)])
        intruder = next(process for name, process, _ in processes.started if name == "intruder")
        assert intruder.wait(timeout=120) == 2, "a SuperNode with an unregistered key must not start"
        assert "this key is not registered with the coordinator" in processes.log("intruder")

        launched = run(CLI + ["deploy", "launch", "--config", str(tmp_path / "run.yaml"), "--run-dir", str(run_dir),
                              "--policy", str(tmp_path / "policy.yaml"), *coordinator], env, 400)
        assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    finally:
        processes.stop_all()
    assert own_processes(token, FLOWER_PROCESSES) == set(), "a Flower process started by this test outlived it"

    federation = json.loads((run_dir / "federated.json").read_text())
    assert federation["mode"] == "deployment"
    assert sorted(site["name"] for site in federation["sites"]) == ["site-a", "site-b"]
    assert json.loads((run_dir / "data.json").read_text())["labels"] == labels
    privacy = json.loads((run_dir / "privacy.json").read_text())
    for site in ("site-a", "site-b"):
        entry = privacy["sites"][site]
        assert entry["history"] and entry["noise_multiplier"] > 0 and 0 < entry["sample_rate"] < 1
    assert not list((tmp_path / "state" / "intruder").glob("run-*")), "the refused site must never have trained"

    checked = run(CLI + ["privacy", str(run_dir)], env, 120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    audited = run(CLI + ["audit", str(run_dir), "--policy", str(tmp_path / "policy.yaml")], env, 300)
    assert audited.returncode == 0, audited.stdout[-3000:] + audited.stderr[-3000:]
    assert "verdict: PASSED" in audited.stdout and (run_dir / "audit_report.html").is_file()
    exported = run(CLI + ["export", str(run_dir), "--out", str(tmp_path / "bundle")], env, 120)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    verified = run(CLI + ["verify", str(tmp_path / "bundle")], env, 120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
