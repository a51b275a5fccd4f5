"""`secure-ft policy show|init|diff` and the warning for judgement keys a policy file omits."""

from __future__ import annotations

import json
import logging

import yaml

from secure_ft.cli import main as cli_main
from secure_ft.pipeline.main_job import resolve_policy
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import default_policy_path, judgement_keys, load_policy

OLD_POLICY = """name: old-style
required_audits: [performance, robustness]
performance:
  min_macro_f1: 0.2
robustness:
  min_accuracy_under_attack:
    default: 0.1
"""


def test_show_lists_every_key_with_value_default_and_meaning(capsys):
    assert cli_main(["policy", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    keys = {row["key"]: row for row in shown["keys"]}
    assert keys["robustness.max_budget_exhausted_fraction"] == {
        "key": "robustness.max_budget_exhausted_fraction", "value": {"default": 0.1}, "default": {}, "set": True,
        "meaning": keys["robustness.max_budget_exhausted_fraction"]["meaning"]}
    assert "query budget" in keys["robustness.max_budget_exhausted_fraction"]["meaning"]
    assert keys["fairness.inconclusive"]["value"] == "review" and keys["fairness.inconclusive"]["default"] == "block"
    assert keys["performance.min_accuracy"]["set"] is False and keys["performance.min_accuracy"]["meaning"]
    assert all(row["meaning"] for row in shown["keys"])


def test_an_omitted_judgement_key_warns_naming_the_key_and_the_default(tmp_path, capsys, caplog):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_POLICY)
    policy, _ = load_policy(path)
    assert len(policy.warnings) == 5
    for key, default in (("performance.use_ci_bound", "false"), ("robustness.use_ci_bound", "false"),
                         ("robustness.max_budget_exhausted_fraction", "{} (no check)"),
                         ("robustness.gated_recipes", "null"), ("robustness.validity", "{max_modification_rate: 0.1, max_text_edit_distance: 30, "
                          "min_sentence_similarity: 0.98, min_words_allowed: 2, numbers_kept: true, parse_stability: true, "
                          "part_of_speech: true, predominant_sense: true, protect_redaction_placeholders: true, "
                          "sentence_window: 15, typos_are_non_words: true}")):
        assert any(f"does not set {key}: the default {default} applies" in warning for warning in policy.warnings)
    # fairness and privacy are not required here: their keys change nothing and are not warned about
    assert not any("fairness." in w or "privacy." in w for w in policy.warnings)
    with caplog.at_level(logging.WARNING, logger="secure_ft.pipeline.main_job"):
        resolve_policy(RunConfig(), path)
    assert "robustness.max_budget_exhausted_fraction" in caplog.text
    assert cli_main(["policy", "show", str(path)]) == 0
    assert "warning: policy 'old-style' does not set robustness.use_ci_bound" in capsys.readouterr().out


def test_the_shipped_default_sets_every_judgement_key():
    policy, _ = load_policy(default_policy_path())
    assert policy.warnings == []
    raw = yaml.safe_load(default_policy_path().read_text())
    assert all(field in raw[section] for section, field in judgement_keys())


def test_diff_names_omitted_keys_against_the_shipped_default(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_POLICY)
    assert cli_main(["policy", "diff", str(path)]) == 0
    out = capsys.readouterr().out
    assert "robustness.max_budget_exhausted_fraction: {} (no check) (omitted: default)  vs  {default: 0.1}" in out
    assert "robustness.use_ci_bound: false (omitted: default)  vs  true" in out
    assert "required_audits: [performance, robustness]  vs  [performance, robustness, fairness, privacy]" in out
    assert cli_main(["policy", "diff", "regulated-default"]) == 0
    assert "no difference" in capsys.readouterr().out


def test_init_writes_a_policy_that_loads_to_the_same_judgement(tmp_path, capsys):
    target = tmp_path / "mine.yaml"
    assert cli_main(["policy", "init", str(target), "--from", "strict"]) == 0
    written, _ = load_policy(target)
    strict, _ = load_policy(default_policy_path().with_name("strict.yaml"))
    assert written.model_dump() == strict.model_dump()
    assert written.warnings == []  # every key is written out, so nothing is left to a default
    assert "or only warn (default: block)\n  inconclusive: review" in target.read_text()
    assert cli_main(["policy", "init", str(target)]) == 2  # never overwrites without --force
