"""The deployment path end to end on loopback, as deploy/README.md tells a coordinator and two sites.

One deployment (`Deployment`, module-scoped: it costs minutes on two cores) serves every test:
`secure-ft deploy certs|superlink|register|supernode` (the kit shipped in the package), two
sites with site-level DP on their own files. Then, in order:

1. a run launched, then `secure-ft privacy`, `audit`, `export` and `verify` on the
   coordinator's run directory; a node holding only ``ca.crt`` can neither register a key
   nor list runs through the sites' address, and a SuperNode with an unregistered key is
   refused before it starts (the front answers which site a key is registered as);
2. the guide's "outages and restarts": the coordinator stopped mid-run (every process it
   started stops, the run's ledger records the interruption), a relaunch into the same run
   directory refused, ``deploy launch --resume`` finishing it in one ledger; then a site
   killed for good — the run fails at the round timeout, naming the site.

Every process started here is stopped by its process group id (and its descendants), and the
module checks that no Flower process carrying this deployment's ``FLWR_HOME`` survives.
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

from secure_ft.deploy.processes import descendants, stop_group
from toy_data import VOCAB, toy_frame

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "secure_ft.cli"]
FLOWER_PROCESSES = "flower-superlink|flower-supernode|flower-superexec|flwr-serverapp|flwr-clientapp|raylet"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_processes(flwr_home: Path | None = None) -> set[str]:
    """Live Flower processes (those whose environment carries `flwr_home`, when given)."""
    found = subprocess.run(["pgrep", "-af", FLOWER_PROCESSES], capture_output=True, text=True).stdout
    # a zombie (<defunct>) has exited already; it only waits for its (re-)parent to reap it
    lines = {line for line in found.splitlines() if "pgrep" not in line and "<defunct>" not in line}
    if flwr_home is None:
        return lines
    marker = f"FLWR_HOME={flwr_home}".encode()
    ours = set()
    for line in lines:
        try:
            if marker in Path(f"/proc/{line.split()[0]}/environ").read_bytes().split(b"\0"):
                ours.add(line)
        except OSError:
            continue
    return ours


class Processes:
    """Processes started by this test, each in its own session; stopped by process group id."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.started = env, logs, []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # a restarted process appends to its log
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.logs)
        self.started.append((name, process, log))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def process(self, name: str) -> subprocess.Popen:
        return next(process for started, process, _ in reversed(self.started) if started == name)

    def stop(self, name: str) -> None:
        """Kill one started process and everything below it, for good."""
        process = self.process(name)
        tree = {process.pid} | descendants(process.pid)
        _signal(process.pid, signal.SIGKILL, group=True)
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        process.wait(timeout=10)

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


POLICY_TEXT = POLICY


class Deployment:
    """A coordinator (SuperLink + Fleet front) and two registered sites, on loopback, in one folder."""

    def __init__(self, root: Path, model_dir: Path):
        self.root = root
        self.flwr_home = root / "flwr"
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "SECURE_FT_CONFIG_DIR": str(root / "cfg"),
                    "OMP_NUM_THREADS": "1"}
        self.pki, self.keys, self.logs = root / "pki", root / "keys", root / "logs"
        self.logs.mkdir(parents=True)
        self.port, self.control_port = free_port(), free_port()
        self.front = f"127.0.0.1:{self.port}"
        self.state = root / "superlink-state"
        self.coordinator = ["--ca", str(self.pki / "ca.crt"), "--control-port", str(self.control_port)]
        self.processes = Processes(self.env, self.logs)
        self.model_dir = model_dir
        frame = toy_frame(rows_per_class=60, seed=3)
        self.labels = sorted(frame["product"].unique())
        (root / "site-a.csv").write_text(frame.iloc[:60].to_csv(index=False))
        (root / "site-b.csv").write_text(frame.iloc[60:120].to_csv(index=False))
        (root / "coordinator.csv").write_text(frame.iloc[120:].to_csv(index=False))
        (root / "policy.yaml").write_text(POLICY_TEXT)

    def config(self, name: str, **federated) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "mode": "federated",
            "data": {"source": str(self.root / "coordinator.csv"), "label_column": "product", "labels": self.labels,
                     "group_columns": ["region"], "min_class_count": 5},
            "model": {"name_or_path": str(self.model_dir), "transfer": "lora", "max_length": 16},
            "training": {"batch_size": 16, "learning_rate": 0.01},
            "privacy": {"mode": "dp", "target_epsilon": 8.0, "accountant": "rdp"},
            "federated": {"num_sites": 2, "rounds": 2, "min_train_sites": 2, "min_available_sites": 2,
                          "federated_evaluation": False, "round_timeout_s": 240, **federated},
            "audits": {"privacy": {"calibrated_attack": False, "n_boot": 0}},
        }))
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(CLI + list(args), self.env, timeout)

    def start_superlink(self) -> subprocess.Popen:
        superlink = self.processes.start("superlink", CLI + [
            "deploy", "superlink", "--pki", str(self.pki), "--host", "127.0.0.1", "--port", str(self.port),
            "--control-port", str(self.control_port), "--state", str(self.state)])
        wait_for_port(self.port, superlink, 120)
        return superlink

    def start_site(self, site: str, data: str | None = None, *extra: str) -> subprocess.Popen:
        return self.processes.start(site, CLI + [
            "deploy", "supernode", "--superlink", self.front, "--ca", str(self.pki / "ca.crt"),
            "--key", str(self.keys / site), "--data", str(self.root / (data or f"{site}.csv")), "--site", site,
            "--state", str(self.root / "state" / site), *extra])

    def launch(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return self.cli("deploy", "launch", *args, "--policy", str(self.root / "policy.yaml"),
                        "--state", str(self.state), *self.coordinator, timeout=timeout)

    def set_up(self) -> None:
        for command in (["ca", "--out", str(self.pki)], ["server", "--out", str(self.pki)],
                        *(["site-key", "--out", str(self.keys), "--site", site]
                          for site in ("site-a", "site-b", "intruder"))):
            result = self.cli("deploy", "certs", *command, timeout=60)
            assert result.returncode == 0, result.stderr
        assert oct((self.keys / "site-a").stat().st_mode)[-3:] == "600"
        assert not (self.pki / "ca.key").exists() and (self.root / "ca-private" / "ca.key").is_file()
        self.start_superlink()
        assert oct((self.state / "superlink.db").stat().st_mode)[-3:] == "600"
        rogue_is_refused(self.root, self.env, self.pki, self.keys, self.front)
        registered = self.cli("deploy", "register", str(self.keys / "site-a.pub"), str(self.keys / "site-b.pub"),
                              "--state", str(self.state), *self.coordinator)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        assert "registered site site-a" in registered.stdout and "registered site site-b" in registered.stdout
        assert oct((self.state / "sites.json").stat().st_mode)[-3:] == "600"
        listed = self.cli("sites", "list", "--state", str(self.state), *self.coordinator, timeout=60)
        assert listed.returncode == 0 and "site-a" in listed.stdout and "site-b" in listed.stdout, listed.stdout
        for site in ("site-a", "site-b"):
            self.start_site(site)
        intruder = self.start_site("intruder", data="site-a.csv")
        assert intruder.wait(timeout=120) == 2, "a SuperNode with an unregistered key must not start"
        assert "this key is not registered with the coordinator" in self.processes.log("intruder")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model_dir):
    deployed = Deployment(tmp_path_factory.mktemp("deployment"), tiny_model_dir)
    try:
        deployed.set_up()
        yield deployed
    finally:
        deployed.processes.stop_all()
    assert flower_processes(deployed.flwr_home) == set(), "a Flower process outlived the deployment"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deployed_dp_run_is_audited_gated_and_exported_and_registration_needs_the_coordinator(deployment):
    run_dir = deployment.root / "run"
    launched = deployment.launch("--config", str(deployment.config("run")), "--run-dir", str(run_dir))
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

    federation = json.loads((run_dir / "federated.json").read_text())
    assert federation["mode"] == "deployment"
    assert sorted(site["name"] for site in federation["sites"]) == ["site-a", "site-b"]
    assert json.loads((run_dir / "data.json").read_text())["labels"] == deployment.labels
    privacy = json.loads((run_dir / "privacy.json").read_text())
    for site in ("site-a", "site-b"):
        entry = privacy["sites"][site]
        assert entry["history"] and entry["noise_multiplier"] > 0 and 0 < entry["sample_rate"] < 1
    assert not list((deployment.root / "state" / "intruder").glob("run-*")), "the refused site must never have trained"

    checked = deployment.cli("privacy", str(run_dir))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    audited = deployment.cli("audit", str(run_dir), "--policy", str(deployment.root / "policy.yaml"), timeout=300)
    assert audited.returncode == 0, audited.stdout[-3000:] + audited.stderr[-3000:]
    assert "verdict: PASSED" in audited.stdout and (run_dir / "audit_report.html").is_file()
    exported = deployment.cli("export", str(run_dir), "--out", str(deployment.root / "bundle"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    verified = deployment.cli("verify", str(deployment.root / "bundle"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    serving_the_model(deployment, deployment.root / "bundle")


def serving_the_model(deployment: Deployment, bundle: Path) -> None:
    """The guide's "serving the model": serve the bundle, ask it, read its card."""
    import httpx

    port = free_port()
    server = deployment.processes.start("serve", CLI + ["serve", str(bundle), "--host", "127.0.0.1", "--port",
                                                        str(port), "--model-name", "complaints", "--threads", "1"])
    wait_for_port(port, server, 180)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        deadline = time.monotonic() + 120
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline and server.poll() is None, deployment.processes.log("serve")[-2000:]
            time.sleep(0.5)
        predicted = client.post("/predict", json={"texts": ["my card was charged twice"]})
        assert predicted.status_code == 200 and predicted.json()["labels"][0] in deployment.labels, predicted.text
        card = client.get("/model-card").json()
    assert card["verdict"]["passed"] is True
    text = card["card"]
    assert "## Evaluation data (the coordinator's hold-out)" in text
    training = text.split("## Training data", 1)[1].split("##", 1)[0]
    assert "site-a" in training and "site-b" in training and "coordinator.csv" not in training


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines() if line.strip()]


def _site_odometer(deployment: Deployment, site: str) -> tuple[list[dict], float]:
    """The guide's `secure-ft privacy budget --fingerprint … --budget-dir <state>/privacy-budget`, as JSON."""
    import hashlib

    fingerprint = hashlib.sha256((deployment.root / f"{site}.csv").read_bytes()).hexdigest()
    shown = deployment.cli("privacy", "budget", "--fingerprint", fingerprint, "--budget-dir",
                           str(deployment.root / "state" / site / "privacy-budget"), "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    table = json.loads(shown.stdout)
    return table["entries"], table["cumulative_epsilon"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_site_policy_refuses_a_run_its_lifetime_budget_cannot_afford(deployment):
    """The guide's "Site policy", followed as written: the site's own odometer and limit, not the coordinator's."""
    entries, spent = _site_odometer(deployment, "site-a")
    assert entries and 0 < spent < float("inf"), entries  # the runs above, as the site itself recorded them
    policy = deployment.root / "site-policy.yaml"
    # another run like those composes to well above 1.05 × what was spent (PRV: about 1.4× for one more run)
    policy.write_text(yaml.safe_dump({"max_lifetime_epsilon": round(spent * 1.05, 4), "min_noise_multiplier": 0.5}))
    _restart_gracefully(deployment, "site-a", "--site-policy", str(policy))
    refused_dir = deployment.root / "refused"
    try:
        refused = deployment.launch("--config", str(deployment.config("refused", round_timeout_s=180)),
                                    "--run-dir", str(refused_dir), timeout=500)
    finally:
        _restart_gracefully(deployment, "site-a")  # without the policy, as the tests after this one expect
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said[-3000:]
    assert "site-a" in said and "max_lifetime_epsilon" in said, said[-3000:]
    assert f"{spent:.4f}" not in said  # the figures stay at the site: the coordinator hears the rule and the limit
    assert "max_lifetime_epsilon" in deployment.processes.log("site-a")
    assert [e["event"] for e in _events(refused_dir) if e["event"] == "federated_failed"], _events(refused_dir)
    after, spent_after = _site_odometer(deployment, "site-a")
    assert spent_after == pytest.approx(spent) and len(after) >= len(entries), after  # nothing released, nothing lost


def _restart_gracefully(deployment: Deployment, site: str, *extra: str) -> None:
    """Stop the SuperNode (SIGTERM), start it again, and wait until the SuperLink has activated it.

    The SuperLink refuses to activate the node again (HTTP 412) until the old session's heartbeat
    has expired (up to 2 × 30 s); a run launched before that finds the site missing.
    """
    activated = deployment.processes.log("superlink").count("[Fleet.ActivateNode] Activated node_id")
    stop_group(deployment.processes.process(site), grace_s=30)
    process = deployment.start_site(site, None, *extra)
    deadline = time.monotonic() + 240
    while deployment.processes.log("superlink").count("[Fleet.ActivateNode] Activated node_id") <= activated:
        assert process.poll() is None, deployment.processes.log(site)[-3000:]
        assert time.monotonic() < deadline, deployment.processes.log("superlink")[-3000:]
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_outages_and_restarts_as_the_guide_says(deployment):
    """Coordinator restarted mid-run: resumed into one ledger. A site gone for good: the run fails naming it."""
    run_dir = deployment.root / "restarted"
    config = deployment.config("restarted", rounds=3, round_timeout_s=240)  # shared CI cores: rounds of 80 s seen
    log = open(deployment.logs / "launch-restarted.log", "wb")
    launch = subprocess.Popen(CLI + ["deploy", "launch", "--config", str(config), "--run-dir", str(run_dir),
                                     "--policy", str(deployment.root / "policy.yaml"), "--state",
                                     str(deployment.state), *deployment.coordinator],
                              env=deployment.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (run_dir / "checkpoints" / "last.pt").is_file():  # round 1 is in
            assert launch.poll() is None and time.monotonic() < deadline, deployment.processes.log("superlink")[-3000:]
            time.sleep(1)
        superlink = deployment.processes.process("superlink")
        tree = descendants(superlink.pid)
        assert tree, "the SuperLink runs SuperExec and the ServerApp below it"
        stopping = time.monotonic()
        superlink.send_signal(signal.SIGTERM)  # `systemctl stop`, Ctrl-C
        superlink.wait(timeout=60)
        stop_seconds = time.monotonic() - stopping
        leftovers = {pid for pid in tree if _alive(pid)}
        assert not leftovers, f"still running after the SuperLink stopped: {leftovers}"
        assert stop_seconds < 20, stop_seconds
        print(f"SuperLink stop: {stop_seconds:.1f}s")
        assert launch.wait(timeout=120) != 0
    finally:
        if launch.poll() is None:
            _signal(launch.pid, signal.SIGKILL, group=True)
            launch.wait(timeout=10)
        log.close()
    assert "--resume" in (deployment.logs / "launch-restarted.log").read_text(errors="replace")
    events = _events(run_dir)
    assert events[-1]["event"] == "federated_interrupted", [event["event"] for event in events]
    assert events[-1]["data"]["resumable"]

    deployment.start_superlink()  # same state: the sites stay registered and reconnect
    again = deployment.launch("--config", str(config), "--run-dir", str(run_dir))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr

    resumed = deployment.launch("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    verify = deployment.cli("ledger", "verify", str(run_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    names = [event["event"] for event in _events(run_dir)]
    assert names.count("federated_started") == 1 and names.count("config_loaded") == 1, names
    assert names.count("federated_resumed") == 1 and names[-1] == "model_saved", names
    rounds = [event["data"]["round"] for event in _events(run_dir) if event["event"] == "federated_round_done"]
    assert rounds[-1] == 3 and sorted(set(rounds)) == [1, 2, 3], rounds
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [entry["round"] for entry in metrics["rounds"]] == [1, 2, 3]
    trained = {}
    for entry in metrics["rounds"]:
        for site in entry["sites"]:
            if site["phase"] == "train" and site["status"] in ("accepted", "clipped"):
                trained[site["site"]] = trained.get(site["site"], 0) + int(site["metrics"]["local-steps"])
    privacy = json.loads((run_dir / "privacy.json").read_text())
    for name, steps in trained.items():  # every round received before and after the restart is accounted
        assert sum(segment[2] for segment in privacy["sites"][name]["history"]) >= steps, (name, privacy)

    # a site gone for good: its round ends at the timeout and the run fails, naming it
    deployment.processes.stop("site-b")
    gone_dir = deployment.root / "site-gone"
    started = time.monotonic()
    # 120 s: long enough for the site still there to answer on loaded cores (30 s was not, once)
    failed = deployment.launch("--config", str(deployment.config("gone", rounds=2, round_timeout_s=120)),
                               "--run-dir", str(gone_dir), timeout=400)
    seconds = time.monotonic() - started
    print(f"site gone for good: the launch ended after {seconds:.0f}s")
    assert failed.returncode != 0
    assert "site-b" in failed.stdout + failed.stderr, failed.stdout[-3000:] + failed.stderr[-3000:]
    print("failure:", next((line for line in (failed.stdout + failed.stderr).splitlines() if "site(s)" in line), ""))
    failure = [event for event in _events(gone_dir) if event["event"] == "federated_failed"]
    assert len(failure) == 1 and failure[0]["data"]["missing_sites"] == ["site-b"], failure

