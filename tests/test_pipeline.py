"""`secure-ft run` end to end on a tiny model: exit codes, what is written where, the ledger."""

from __future__ import annotations

import json

from secure_ft.cli import main
from secure_ft.records.run_ledger import verify_ledger


def write_policy(tmp_path, min_gain: float):
    path = tmp_path / "policy.yaml"
    path.write_text(f"name: tiny\nrequired_audits: [performance]\nperformance:\n  min_gain_over_majority: {min_gain}\n")
    return path


def run_cli(tmp_path, toy_config, policy, capsys):
    toy_config.training.epochs = 4
    toy_config.training.learning_rate = 2e-2
    toy_config.policy = str(policy)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(toy_config.to_yaml())
    out = tmp_path / "out"
    code = main(["run", "--config", str(config_path), "--out", str(out)])
    return code, out, capsys.readouterr().out


def test_passing_run_exports_a_verified_bundle(tmp_path, toy_config, capsys):
    code, out, printed = run_cli(tmp_path, toy_config, write_policy(tmp_path, 0.1), capsys)
    assert code == 0, printed
    (run_dir,) = [p for p in out.iterdir() if not p.name.endswith("-bundle")]
    bundle = out / f"{run_dir.name}-bundle"
    assert f"bundle: {bundle}" in printed and "verdict: PASSED" in printed
    assert printed.count("run directory:") == 1
    export = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()][-1]
    # export.signing_key is null: the per-user default key signed, and the ledger says so
    assert export["event"] == "export" and export["data"]["key_source"].startswith("per-user default key")
    assert (run_dir / "audit_report.html").is_file() and (bundle / "bundle.sig").is_file()
    assert main(["verify", str(bundle)]) == 0
    events = [json.loads(line)["event"] for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    for expected in ("config_loaded", "data_fingerprinted", "epoch_done", "model_saved", "policy_loaded",
                     "audit_finished", "verdict", "report_written", "export"):
        assert expected in events, expected
    assert verify_ledger(run_dir) == len(events)


def test_blocked_run_exits_3_with_a_report_and_no_bundle(tmp_path, toy_config, capsys):
    code, out, printed = run_cli(tmp_path, toy_config, write_policy(tmp_path, 0.99), capsys)
    assert code == 3, printed
    assert "verdict: BLOCKED" in printed and "gain_over_majority" in printed
    assert "what the checks that did not pass (failed or inconclusive) mean:" in printed and "test accuracy minus always guessing" in printed
    (run_dir,) = list(out.iterdir())
    assert (run_dir / "audit_report.html").is_file()
    verdict = json.loads((run_dir / "verdict.json").read_text())
    assert verdict["passed"] is False and verdict["reasons"]
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b")]) == 3
    assert not (tmp_path / "b").exists()


def test_bad_policy_fails_before_training(tmp_path, toy_config, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("required_audits: [performance]\nperformance:\n  min_accuracy: 7\n")
    code, out, _ = run_cli(tmp_path, toy_config, policy, capsys)
    assert code == 2
    assert not out.exists() or not any(out.iterdir())
