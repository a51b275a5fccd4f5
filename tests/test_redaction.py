"""Redaction acts on values that hold text: every JSON a run's audits and report write withholds strings, never numbers."""

from __future__ import annotations

import json

import pytest

import fake_run
from fake_run import CANARY, make_run
from secure_ft.pipeline.report.document import WITHHELD, withhold_text
from secure_ft.records.config import RunConfig
from secure_ft.release.export import export_bundle

# numbers the audits write under names that end like "examples" (robustness sampling, resumed attacks,
# the DP engine's augmentation multiplicity)
COUNTS = {"num_examples": 30, "min_correct_examples": 100, "resumed_examples": 0, "rows_per_example": 5}


def with_counts(passing: bool = True):
    results = original(passing)
    for result in results:
        if result.name == "robustness":
            result.metrics.update({key: value for key, value in COUNTS.items() if key != "rows_per_example"})
            result.metrics["examples"] = [{"text": CANARY, "label": 2, "queries": 41.5, "succeeded": True}]
        if result.name == "privacy":
            result.metrics["guarantee"]["rows_per_example"] = COUNTS["rows_per_example"]
    return results


original = fake_run.audit_results


def written_json(root):
    """Relative path → parsed content of every JSON file under `root`."""
    return {path.relative_to(root).as_posix(): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(root.rglob("*.json"))}


def withheld_paths(value, path=()):
    """Paths of every withheld marker in a JSON tree."""
    if value == WITHHELD:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from withheld_paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from withheld_paths(item, path + (index,))


def at(value, path):
    for part in path:
        value = value[part]
    return value


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(fake_run, "audit_results", with_counts)
    try:
        root = tmp_path_factory.mktemp("redaction")
        redacted = make_run(root / "redacted")
        opted = make_run(root / "opted", config=RunConfig.model_validate({"report": {"include_examples": True}}))
        bundle = export_bundle(redacted.run_dir, root / "bundle")
    finally:
        patch.undo()
    return redacted.run_dir, opted.run_dir, bundle


def test_no_json_the_audits_and_report_write_withholds_a_number(runs):
    redacted_dir, opted_dir, bundle = runs
    redacted, opted = written_json(redacted_dir), written_json(opted_dir)
    assert {"audit_report.json", "audits/robustness.json", "audits/privacy.json"} <= set(redacted)
    markers = 0
    for name, content in redacted.items():
        for path in withheld_paths(content):
            markers += 1
            original_value = at(opted[name], path)  # the same file written with include_examples: true
            assert isinstance(original_value, str), f"{name}: {'.'.join(map(str, path))} withheld a {original_value!r}"
    assert markers > 0  # the canary text was withheld somewhere
    for name in ("audits/robustness.json", "audit_report.json"):
        robustness = redacted[name] if name.startswith("audits/") else redacted[name]["audits"]["robustness"]
        for key in ("num_examples", "min_correct_examples", "resumed_examples"):
            assert robustness["metrics"][key] == COUNTS[key]
        assert robustness["metrics"]["examples"] == [{"text": WITHHELD, "label": 2, "queries": 41.5, "succeeded": True}]
    # the bundle carries the same files: no number withheld there either
    bundled = written_json(bundle)
    assert {name for name in bundled if any(withheld_paths(bundled[name]))} <= set(redacted)
    assert all(bundled[name] == redacted[name] for name in bundled if name in redacted and name != "model/config.json")
    assert CANARY not in "".join(path.read_text() for path in bundle.rglob("*.json"))
    html = (redacted_dir / "audit_report.html").read_text(encoding="utf-8")
    assert CANARY not in html


def test_withholding_keeps_every_non_string_value():
    value = {"num_examples": 3, "worst_examples": [{"original_text": "secret", "score": 0.5, "flag": None}],
             "text": "secret", "texts": ["a", "b"], "sentences": [], "nested": {"example": 7}}
    assert withhold_text(value) == {
        "num_examples": 3, "worst_examples": [{"original_text": WITHHELD, "score": 0.5, "flag": None}],
        "text": WITHHELD, "texts": [WITHHELD, WITHHELD], "sentences": [], "nested": {"example": 7}}
