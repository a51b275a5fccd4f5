"""End to end with the real audits: text from the data never reaches the report or the bundle."""

from __future__ import annotations

import pandas as pd

from secure_ft.cli import main
from secure_ft.release.export import verify_bundle
from toy_data import toy_frame

CANARY = "qjxcanary"  # not a vocabulary word: it can only appear if text is copied


def test_canary_in_every_row_never_reaches_report_or_bundle(tmp_path, toy_config, capsys):
    frame = toy_frame()
    frame["text"] = frame["text"] + f" {CANARY} " + frame.index.astype(str)
    data = tmp_path / "canary.csv"
    frame.to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: canary-test\nrequired_audits: [performance, fairness, privacy]\n"
        "performance:\n  min_gain_over_majority: -1.0\n"
        "fairness:\n  max_demographic_parity_difference: 1.0\n  insufficient_data: warn\n"
        "privacy:\n  require_dp: false\n  max_membership_auc: 1.0\n"
    )
    toy_config.data.source = str(data)
    toy_config.policy = str(policy)
    toy_config.training.epochs = 2
    toy_config.audits.fairness.min_group_size = 5
    toy_config.audits.fairness.n_boot = 20
    toy_config.audits.privacy.n_boot = 20
    toy_config.audits.privacy.membership_examples = 20
    config_path = tmp_path / "run.yaml"
    config_path.write_text(toy_config.to_yaml())
    out = tmp_path / "out"

    code = main(["run", "--config", str(config_path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (bundle,) = [p for p in out.iterdir() if p.name.endswith("-bundle")]
    (run_dir,) = [p for p in out.iterdir() if not p.name.endswith("-bundle")]
    assert verify_bundle(bundle).files > 5
    checked = [run_dir / "audit_report.json", run_dir / "audit_report.html"]
    checked += [p for p in bundle.rglob("*") if p.is_file()]
    for path in checked:
        assert CANARY.encode() not in path.read_bytes(), f"{path} holds text from the data"
    # the canary is really in the data the audits read (the check above is not vacuous)
    assert pd.read_csv(data)["text"].str.contains(CANARY).all()
