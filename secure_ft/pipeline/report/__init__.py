"""The compliance report of a run: ``audit_report.json`` (the record) and ``audit_report.html`` (its view).

An auditor files the JSON; a person reads the HTML. Both come from one document built by
:func:`build_report` from the run directory (``data.json``, ``metrics.json``,
``privacy.json``, the model folder, the ledger), the audit results and the verdict. The JSON
carries ``schema_version`` so that later readers can tell which layout they hold.

>>> json_path, html_path = write_report(run_dir, results, verdict, config)  # doctest: +SKIP

The HTML is self-contained (inline style, charts as embedded PNGs) and holds no training or
test text unless ``report.include_examples`` is true.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from audits.gate import Verdict
from audits.result import AuditResult
from secure_ft.pipeline.report.document import REPORT_SCHEMA_VERSION, build_report, withhold_text
from secure_ft.pipeline.report.html import SECTIONS, render_html
from secure_ft.records.atomic_files import atomic_write_text
from secure_ft.records.config import RunConfig
from secure_ft.records.run_directory import REPORT_HTML_FILE, REPORT_JSON_FILE

__all__ = ["write_report", "build_report", "render_html", "withhold_text", "REPORT_SCHEMA_VERSION",
           "SECTIONS", "REPORT_JSON", "REPORT_HTML"]

REPORT_JSON = REPORT_JSON_FILE
REPORT_HTML = REPORT_HTML_FILE


def write_report(run_dir: str | os.PathLike[str], results: list[AuditResult], verdict: Verdict,
                 config: RunConfig, signer: dict | None = None) -> tuple[Path, Path]:
    """Write ``run_dir/audit_report.json`` and ``run_dir/audit_report.html`` (atomically).

    Returns
    -------
    (json_path, html_path)
    """
    run_dir = Path(run_dir)
    report = build_report(run_dir, results, verdict, config, signer)
    json_path, html_path = run_dir / REPORT_JSON, run_dir / REPORT_HTML
    atomic_write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n")
    atomic_write_text(html_path, render_html(report))
    return json_path, html_path
