"""Compliance report: JSON schema, self-contained HTML, robustness to missing parts, no leaked text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from audits.gate import decide
from audits.result import AuditResult
from fake_run import CANARY, make_run
from secure_ft.pipeline.report import REPORT_SCHEMA_VERSION, SECTIONS, write_report
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import Policy


class _Page(HTMLParser):
    """Collects section ids, every src/href, and the visible text."""

    def __init__(self):
        super().__init__()
        self.ids, self.sources, self.links, self.text, self.images = [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.ids.append(attrs.get("id"))
        if tag == "img":
            self.images += 1
        for name in ("src", "href", "srcset", "data", "action"):
            if attrs.get(name):
                (self.sources if name != "href" else self.links).append(attrs[name])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.full_text = " ".join(page.text)
    return page


def test_html_report_is_complete_and_self_contained(tmp_path):
    run = make_run(tmp_path)
    html_path = run.run_dir / "audit_report.html"
    page = _parse(html_path)
    assert "Verdict: PASSED" in page.full_text
    assert page.ids[: len(SECTIONS)] == [key for key, _ in SECTIONS]
    # epsilon curve, training curves, group bars, robustness bars, ROC
    assert page.images >= 5
    assert page.sources and all(src.startswith("data:image/png;base64,") for src in page.sources)
    assert all(link.startswith("#") for link in page.links)
    raw = html_path.read_text()
    assert not re.search(r"https?://", raw)
    assert "@import" not in raw and "url(" not in raw
    for expected in ("d" * 64, run.verdict.model_sha256, "prv", "Older American", "deepwordbug", "transformers"):
        assert expected in page.full_text


def test_json_report_has_schema_and_every_part(tmp_path):
    run = make_run(tmp_path)
    report = json.loads((run.run_dir / "audit_report.json").read_text())
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    assert report["verdict"] == run.verdict.to_dict()
    assert report["run"]["data"]["fingerprint"] == "d" * 64
    assert report["run"]["model"]["matches_verdict"] is True
    assert report["run"]["ledger"]["verified"] is True
    assert report["run"]["library_versions"]["torch"]
    assert report["run"]["platform"]["cpu_count"] >= 1
    assert report["privacy_guarantee"]["epsilon"] == 3.2
    assert set(report["audits"]) == {"performance", "fairness", "robustness", "privacy"}
    assert report["examples_included"] is False


def test_blocked_verdict_opens_with_reasons_and_missing_parts_render_as_not_run(tmp_path):
    run = make_run(tmp_path, report=False)
    for name in ("metrics.json", "privacy.json"):
        (run.run_dir / name).unlink()
    results = [AuditResult.failed_to_run("robustness", "TextAttack resources missing")]
    verdict = decide(results, Policy(name="strict"), run.verdict.model_sha256, "e" * 64)
    json_path, html_path = write_report(run.run_dir, results, verdict, run.config)
    page = _parse(html_path)
    text = page.full_text
    assert "Verdict: BLOCKED" in text
    first_reason = verdict.reasons[0]
    banner = text.index("Verdict: BLOCKED")
    assert banner < text.index(first_reason) < text.index("Run identity", banner)
    assert "could not run" in text and "TextAttack resources missing" in text
    assert text.count("audit was not run") == 3  # performance, fairness, membership (privacy)
    assert "No training metrics recorded" in text and "No privacy guarantee recorded" in text
    assert json.loads(json_path.read_text())["training"] is None


def test_canary_is_withheld_unless_include_examples(tmp_path):
    run = make_run(tmp_path / "a")
    for name in ("audit_report.json", "audit_report.html"):
        assert CANARY not in (run.run_dir / name).read_text()
    assert "withheld" in (run.run_dir / "audit_report.json").read_text()
    opted = make_run(tmp_path / "b", config=RunConfig.model_validate({"report": {"include_examples": True}}))
    assert CANARY in (opted.run_dir / "audit_report.json").read_text()
    assert "report.include_examples: true" in (opted.run_dir / "audit_report.html").read_text()


def test_non_finite_metrics_become_null_and_edited_model_is_flagged(tmp_path):
    run = make_run(tmp_path, report=False)
    results = run.results + [AuditResult.from_checks("extra", {"ratio": float("nan"), "inf": float("inf")}, [])]
    data = bytearray((run.run_dir / "model" / "model.safetensors").read_bytes())
    data[-3] ^= 1
    (run.run_dir / "model" / "model.safetensors").write_bytes(bytes(data))
    json_path, html_path = write_report(run.run_dir, results, run.verdict, run.config)
    report = json.loads(json_path.read_text())  # strict JSON: no NaN tokens
    assert "NaN" not in json_path.read_text()
    assert report["audits"]["extra"]["metrics"] == {"ratio": None, "inf": None}
    assert report["run"]["model"]["matches_verdict"] is False
    page = _parse(html_path)
    assert "changed after the audit" in page.full_text
    assert "other-audits" in page.ids


def test_federated_guarantee_renders_sites_and_central(tmp_path):
    run = make_run(tmp_path, report=False)
    privacy = json.loads((run.run_dir / "privacy.json").read_text())
    privacy["sites"] = {"north": {"epsilon": 2.5, "delta": 1e-5}, "south": {"epsilon": None, "delta": 1e-5}}
    privacy["central"] = {"epsilon": 4.0, "delta": 1e-5}
    (run.run_dir / "privacy.json").write_text(json.dumps(privacy))
    json_path, html_path = write_report(run.run_dir, run.results, run.verdict, run.config)
    text = _parse(html_path).full_text
    assert "Per-site guarantees (federated)" in text and "north" in text and "south" in text
    assert "Central (server-side) DP" in text
    report = json.loads(json_path.read_text())
    assert report["run"]["mode"] == "federated, sample-level DP on each site and central DP"


def test_unexpected_metric_shapes_never_break_the_report(tmp_path):
    run = make_run(tmp_path, report=False)
    odd = [
        AuditResult.from_checks("performance", {"accuracy": "n/a", "per_class": "oops", "confusion_matrix": {"labels": ["a"]}}, []),
        AuditResult.from_checks("fairness", {"overall": [], "columns": {"x": "bad", "y": {"groups": [1, None, {"group": "g"}]}}}, []),
        AuditResult.from_checks("robustness", {"recipes": [{"recipe": "pwws", "accuracy_under_attack": {"value": 0.2}}, "junk"]}, []),
        AuditResult.from_checks("privacy", {"guarantee": {"scopes": [None]}, "membership": {"attacks": {"loss": {"roc_curve": [[0, 0], [1]]}}}}, []),
    ]
    (run.run_dir / "metrics.json").write_text('{"epochs": [{"epoch": "one"}, 3]}')
    (run.run_dir / "privacy.json").write_text('{"epsilon": null, "epsilon_history": [[1], [2, "x"]], "sites": [1, 2]}')
    _, html_path = write_report(run.run_dir, odd, run.verdict, run.config)
    page = _parse(html_path)
    assert page.ids[: len(SECTIONS)] == [key for key, _ in SECTIONS]
    assert "pwws" in page.full_text
