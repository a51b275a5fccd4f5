"""Technical documentation (issue #25 item 5): the card: statements in the report, the model card and config.yaml.

Pre-flight's refusal of a run without them is tested in tests/test_preflight.py; approvals
under human oversight in a released bundle in tests/test_release_policy.py.
"""

from __future__ import annotations

import json
import shutil

import yaml

from fake_run import make_run
from secure_ft.cli import main as cli_main
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import default_policy_path
from secure_ft.records.technical_documentation import builtin_card
from secure_ft.release.human_oversight import NO_APPROVALS
from secure_ft.release.model_card import render_model_card
from toy_data import TOY_CARD

STATEMENTS = ("intended_purpose", "out_of_scope_uses", "known_limitations", "deidentification", "data_provenance")


def test_report_json_and_html_show_the_built_in_demo_statements(tmp_path):
    run = make_run(tmp_path)  # the built-in default config: builtin:cfpb, regulated-default
    report = json.loads((run.run_dir / "audit_report.json").read_text())
    documentation = report["technical_documentation"]
    shipped = builtin_card("builtin:cfpb")
    assert set(shipped) == set(STATEMENTS)
    assert documentation["statements"] == shipped
    assert documentation["source"] == {name: "shipped with builtin:cfpb" for name in STATEMENTS}
    assert documentation["required_by_policy"] == list(STATEMENTS)  # regulated-default requires every one
    assert documentation["human_oversight"] == {"approvals": [], "statement": NO_APPROVALS,
                                                "signatures_checked": False}
    html = (run.run_dir / "audit_report.html").read_text()
    assert '<section id="documentation"><h2>Technical documentation</h2>' in html
    for heading in ("Intended purpose", "Out-of-scope uses", "Known limitations", "De-identification",
                    "Data provenance", "Human oversight"):
        assert f"<h3>{heading}" in html
    assert "XX / XXXX" in html and "none yet" in html
    # the statements are part of the run's config.yaml, which the signed verdict binds
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["card"] == shipped


def test_statements_the_config_gives_are_shown_as_written(tmp_path):
    config = RunConfig.model_validate({"card": TOY_CARD})
    run = make_run(tmp_path, config=config)
    report = json.loads((run.run_dir / "audit_report.json").read_text())
    assert report["technical_documentation"]["statements"] == TOY_CARD
    assert set(report["technical_documentation"]["source"].values()) == {"config"}
    card = render_model_card(report)
    section = card[card.index("## Technical documentation"):]
    assert TOY_CARD["deidentification"] in section and TOY_CARD["data_provenance"] in section
    assert f"- {TOY_CARD['known_limitations'][0]}" in section
    assert "### Human oversight" in section and "none yet" in section
    # the card's purpose and out-of-scope uses are the model card's intended use too
    intended = card[card.index("## Intended use"):card.index("## Technical documentation")]
    assert TOY_CARD["intended_purpose"] in intended and f"- {TOY_CARD['out_of_scope_uses'][0]}" in intended


def test_an_edited_statement_after_the_verdict_is_refused_at_export(tmp_path, capsys):
    run = make_run(tmp_path / "made").run_dir
    copy = shutil.copytree(run, tmp_path / "run")
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["card"]["known_limitations"] = ["None."]
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli_main(["export", str(copy), "--out", str(tmp_path / "bundle")]) == 4
    assert "config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()
    assert cli_main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0  # the unedited run exports
    assert "## Technical documentation" in (tmp_path / "bundle" / "README.md").read_text()


def test_the_regulated_policies_require_every_statement_and_research_none():
    from secure_ft.records.policy import load_policy

    folder = default_policy_path().parent
    for name in ("regulated-default", "strict"):
        assert load_policy(folder / f"{name}.yaml")[0].documentation.required_card_fields == list(STATEMENTS)
    assert load_policy(folder / "research.yaml")[0].documentation.required_card_fields == []
