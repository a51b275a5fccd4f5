"""deploy/README.md as written: its worked example, policy and paths agree with the shipped files.

The guide's YAML blocks are the example files; its data-preparation snippet, run as written,
gives a hold-out whose test split the fairness audit can judge (pre-flight passes against
the example policy); the example policy asks what the shipped default policy asks of
performance; and the systemd units may write exactly where the guide's commands write.
(The loopback deployment itself is followed in test_deploy_loopback.py.)
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from secure_ft.pipeline.preflight import check_before_training
from secure_ft.records.config import load_config
from secure_ft.records.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return [textwrap.dedent(block) for block in re.findall(rf"```{language}\n(.*?)```", GUIDE, re.S)]


def guide_yaml(marker: str) -> dict:
    return yaml.safe_load(next(block for block in blocks("yaml") if marker in block))


def test_the_guides_worked_example_is_the_shipped_example():
    assert guide_yaml("holdout.csv") == yaml.safe_load((ROOT / "examples" / "deployed-federation.yaml").read_text())
    assert guide_yaml("name: deployed-research") == yaml.safe_load(
        (ROOT / "examples" / "deployed-federation-policy.yaml").read_text())


def test_the_example_policy_asks_the_default_policys_performance_bar():
    example, _ = load_policy(ROOT / "examples" / "deployed-federation-policy.yaml")
    default, _ = load_policy(ROOT / "secure_ft" / "records" / "policies" / "regulated-default.yaml")
    assert example.performance.min_gain_over_majority == default.performance.min_gain_over_majority


def test_the_worked_example_as_written_passes_preflight_with_a_holdout_the_fairness_audit_can_judge(tmp_path):
    snippet = next(block for block in blocks("bash") if "python - <<'PY'" in block)
    code = snippet.split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    sizes = {name: len((tmp_path / f"{name}.csv").read_text().splitlines()) for name in ("hospital-a", "hospital-b")}
    assert all(size > 480 for size in sizes.values())  # 480 rows each (texts may span lines)
    raw = yaml.safe_load((ROOT / "examples" / "deployed-federation.yaml").read_text())
    raw["data"]["source"] = str(tmp_path / "holdout.csv")
    raw["policy"] = str(ROOT / "examples" / "deployed-federation-policy.yaml")
    (tmp_path / "federated.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "federated.yaml")
    policy, _ = load_policy(raw["policy"])
    report = check_before_training(config, policy, raw["policy"], deployed=True)
    assert report.epsilons == {"sites": 8.0}
    assert config.model.transfer == "auto"  # resolved to the probe for sites this small (transfer_choice)


def test_the_systemd_units_may_write_where_the_guide_writes():
    def unit(name: str) -> configparser.RawConfigParser:
        parser = configparser.RawConfigParser(strict=False)
        parser.optionxform = str
        parser.read_string((ROOT / "deploy" / "systemd" / name).read_text())
        return parser

    superlink = unit("secure-ft-superlink.service")
    writable = superlink.get("Service", "ReadWritePaths").split()
    for path in ("/var/lib/secure-ft/superlink", "/srv/secure-ft/runs/2026-06-01", "/srv/secure-ft/bundles/2026-06-01"):
        assert f" {path}" in GUIDE or f"={path}" in GUIDE, path  # the guide uses it ...
        assert any(path.startswith(folder.rstrip("/") + "/") for folder in writable), path  # ... and may write it
    environment = (ROOT / "deploy" / "systemd" / "superlink.env.example").read_text()
    assert "\nFLWR_HOME=/var/lib/secure-ft/" in environment  # Flower installs the app there (ProtectHome)
    supernode = unit("secure-ft-supernode@.service")
    assert "/srv/secure-ft/data/hospital-a.csv" in GUIDE
    assert "/srv/secure-ft/data" in supernode.get("Service", "ReadOnlyPaths").split()
    assert any("/var/lib/secure-ft/site".startswith(folder) for folder in supernode.get("Service", "ReadWritePaths").split())
