"""The main job: train → audits → gate → report → export when the gate passes.

Everything goes under one output folder: the run directory (model, metrics, ledger, audit
evidence, verdict, report) and, when the policy is met, the signed bundle beside it. Each
step appends to the run's hash-chained ledger, so the record of what happened can be
checked later with `secure-ft ledger verify`.

`audit_finished_run` runs the same audits → gate → report → signed verdict on a run
directory that something else trained (a deployed federation's coordinator, an earlier
`secure-ft train`); `secure-ft export` then writes its bundle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from audits.context import AuditContext
from audits.gate import Verdict, decide
from audits.registry import run_audit
from audits.result import AuditResult
from secure_ft.errors import SecureFTError
from secure_ft.pipeline.preflight import check_before_training
from secure_ft.records.atomic_files import atomic_write_bytes
from secure_ft.records.config import RunConfig
from secure_ft.records.model_identity import model_digest
from secure_ft.records.policy import default_policy_path, describe_policy, load_policy
from secure_ft.records.run_directory import RunDirectory, new_run_dir
from secure_ft.records.run_ledger import Ledger
from secure_ft.release.keys import load_private_key, public_key_fingerprint, resolve_signing_key_path
from secure_ft.release.provenance import write_provenance
from secure_ft.release.verdict_attestation import attest_verdict, record_attestation
from secure_ft.text.models import resolve_device
from secure_ft.training.central_run import TrainedRun, train_run

log = logging.getLogger(__name__)


@dataclass
class PipelineOutcome:
    run_dir: Path
    verdict: Verdict
    results: list[AuditResult]
    report_json: Path
    report_html: Path
    bundle: Path | None
    export_error: str | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.bundle is not None else 3


def train(config: RunConfig, output_dir: Path, resume_dir: Path | None, progress: bool) -> TrainedRun:
    if resume_dir is not None and config.mode == "federated":
        from secure_ft.training.finished_run import load_finished_run

        # a federated run (simulated or deployed) is not resumable; a finished one is audited as it is
        return load_finished_run(resume_dir)[0]
    if config.mode == "federated":
        from federated import run_federated

        return run_federated(config, new_run_dir(output_dir), progress=progress)
    if resume_dir is not None:
        return train_run(None, resume_dir, resume=True, progress=progress)
    return train_run(config, output_dir=output_dir, progress=progress)


def run_audits(trained: TrainedRun, config: RunConfig, policy, ledger: Ledger) -> list[AuditResult]:
    """Every audit the policy requires, in the policy's order; failures are results, not crashes."""
    from secure_ft.training.finished_run import members_held_here

    context = AuditContext(run_dir=trained.run_dir, model_dir=trained.model_dir, splits=trained.splits,
                           config=config, policy=policy, device=resolve_device(config.device),
                           members_available=members_held_here(trained.run_dir))
    results = []
    for name in dict.fromkeys(policy.required_audits):
        log.info("audit %s: running", name)
        result = run_audit(name, context)
        results.append(result)
        RunDirectory(trained.run_dir).write_audit_result(name, audit_record(result, config))
        ledger.append("audit_finished", audit=name, passed=result.passed, error=result.error,
                      failed_checks=[check.name for check in result.checks if check.outcome == "fail"],
                      inconclusive_checks=[check.name for check in result.inconclusive_checks()])
        log.info("audit %s: %s", name, audit_state(result))
    return results


def audit_state(result: AuditResult) -> str:
    """passed, FAILED, could not run, or inconclusive (nothing failed, some checks could not be settled)."""
    if result.passed:
        return "passed"
    if result.error:
        return "could not run"
    return "inconclusive" if result.inconclusive_checks() and not result.failure_reasons() else "FAILED"


def audit_record(result: AuditResult, config: RunConfig) -> dict:
    """An audit result as stored (and signed, and exported): test texts withheld unless opted in."""
    from secure_ft.pipeline.report import withhold_text

    raw = result.to_dict()
    return raw if config.report.include_examples else withhold_text(raw)


def resolve_policy(config: RunConfig, policy_file: str | Path | None = None):
    """The policy to apply (the given file, else the config's, else the built-in default): (path, policy, sha256)."""
    policy_path = Path(policy_file) if policy_file else (Path(config.policy) if config.policy else default_policy_path())
    policy, policy_sha256 = load_policy(policy_path)
    for warning in policy.warnings:  # an omitted judgement key is judged by its default: say which
        log.warning("%s: %s", policy_path, warning)
    return policy_path, policy, policy_sha256


def run_pipeline(config: RunConfig, output_dir: str | Path, *, resume_dir: Path | None = None,
                 progress: bool = True) -> PipelineOutcome:
    from secure_ft.release.export import export_bundle

    output_dir = Path(output_dir)
    policy_path, policy, policy_sha256 = resolve_policy(config)  # a bad policy fails before any training
    if resume_dir is None:
        check_before_training(config, policy, policy_path)  # refuse now what the gate would block after training
    trained = train(config, output_dir, resume_dir, progress)
    outcome, gate_key = audit_and_gate(trained, policy_path, policy, policy_sha256)
    if outcome.verdict.passed:
        target = output_dir / f"{outcome.run_dir.name}-bundle"
        try:
            # export verifies the finished bundle before it renames it into place
            outcome.bundle = export_bundle(outcome.run_dir, target, signing_key=gate_key.path,
                                           trusted_keys=[gate_key.public_key],
                                           signing_key_given_by="the run config (export.signing_key)")
        except SecureFTError as error:
            outcome.export_error = str(error)
            log.error("export failed: %s", error)
    show_in_mlflow(outcome, gate_key)
    return outcome


def show_in_mlflow(outcome: PipelineOutcome, gate_key: "GateKey | None" = None) -> None:
    """With tracking configured, upload the finished run and register its bundle; never fails the run.

    MLflow is a view of the run directory (`secure_ft.pipeline.mlflow_tracking`): a failure is warned
    about once and recorded in the ledger, and ``secure-ft mlflow sync`` uploads the run later.
    """
    from secure_ft.pipeline.mlflow_tracking import resolve_tracking_uri, track_finished_run

    settings = RunDirectory(outcome.run_dir).read_config().tracking.mlflow
    if not resolve_tracking_uri(settings.uri):
        return  # tracking is off: MLflow is never imported
    track_finished_run(outcome.run_dir)
    if outcome.bundle is not None and settings.register:
        from secure_ft.pipeline.mlflow_registry import register_after_run

        register_after_run(outcome.run_dir, outcome.bundle, settings.register, settings.uri,
                           trusted_keys=[gate_key.public_key] if gate_key else None)


def audit_finished_run(run_dir: str | Path, policy_file: str | Path | None = None) -> PipelineOutcome:
    """Audits → gate → report → signed verdict for a run directory trained by anything; no export."""
    from secure_ft.training.finished_run import load_finished_run

    trained, config = load_finished_run(run_dir)
    policy_path, policy, policy_sha256 = resolve_policy(config, policy_file)
    outcome, _ = audit_and_gate(trained, policy_path, policy, policy_sha256)
    show_in_mlflow(outcome)
    return outcome


def audit_and_gate(trained: TrainedRun, policy_path: Path, policy, policy_sha256: str) -> tuple[PipelineOutcome, "GateKey"]:
    """Run the policy's audits on a trained run, decide, write the report and sign the verdict."""
    from secure_ft.pipeline.report import write_report

    run = RunDirectory(trained.run_dir)
    config = run.read_config()  # what the run actually used (e.g. transfer: auto resolved), also on resume
    run_dir = run.path
    ledger = Ledger(run_dir)
    atomic_write_bytes(run.policy_file, policy_path.read_bytes())
    ledger.append("policy_loaded", policy=policy.name, policy_sha256=policy_sha256, source=str(policy_path))

    results = run_audits(trained, config, policy, ledger)
    verdict = decide(results, policy, model_digest(trained.model_dir), policy_sha256)
    run.write_verdict(verdict.to_dict())
    write_provenance(run_dir, config)  # data, base model, packages: shown in the report, bound by the signature
    gate_key = GateKey.for_config(config)
    # the report comes before the signature, so the signature covers it too
    report_json, report_html = write_report(run_dir, results, verdict, config, signer=gate_key.describe())
    ledger.append("report_written", files=[report_json.name, report_html.name])
    gate_key.sign(run, verdict, results)
    return PipelineOutcome(run_dir, verdict, results, report_json, report_html, None), gate_key


@dataclass
class GateKey:
    """The key the gate signs with: the organisation's (``export.signing_key``,
    ``$SECURE_FT_SIGNING_KEY``) or the per-user default key, made once on first use and trusted
    on this machine."""

    path: Path
    private_key: object
    source: str
    created: bool

    @classmethod
    def for_config(cls, config: RunConfig) -> "GateKey":
        configured = config.resolve_path(config.export.signing_key) if config.export.signing_key else None
        path, source, created = resolve_signing_key_path(configured)
        if created:
            log.warning("no signing key was configured: made a per-user gate key %s (trusted on this machine only). "
                        "Give %s to whoever verifies your bundles, or configure an organisation key "
                        "(export.signing_key or $SECURE_FT_SIGNING_KEY)", path, path.with_suffix(".pub"))
        return cls(path, load_private_key(path), source, created)

    @property
    def public_key(self):
        return self.private_key.public_key()

    def describe(self) -> dict:
        """What the report says about the signer (never the private key)."""
        return {"public_key_sha256": public_key_fingerprint(self.public_key), "key_source": self.source,
                "created_for_this_run": self.created}

    def sign(self, run: RunDirectory, verdict: Verdict, results: list[AuditResult]) -> None:
        """Sign the verdict over the model and evidence (`secure_ft.release.verdict_attestation`)."""
        envelope = attest_verdict(run.path, verdict, [result.name for result in results], self.private_key,
                                  self.source)
        record_attestation(run.path, verdict, envelope)


def verdict_explanation_lines(outcome: PipelineOutcome) -> list[str]:
    """What the failed checks mean, and warnings the verdict's pass carries (`secure_ft.release.verdict_explanations`)."""
    from secure_ft.release.verdict_explanations import failure_explanations, interval_warnings

    audits = {result.name: result.to_dict() for result in outcome.results}  # the policy's required audits
    lines = []
    failed = failure_explanations(audits, list(audits))
    if failed:
        lines.append("what the checks that did not pass (failed or inconclusive) mean:")
        lines += [f"  - {item['audit']} {item['check']}: {item['explanation']}" for item in failed]
    for warning in [*outcome.verdict.warnings, *interval_warnings(audits)]:
        lines.append(f"warning: {warning}")
    return lines


def print_outcome(outcome: PipelineOutcome) -> None:
    verdict = outcome.verdict
    print()
    print(f"run directory: {outcome.run_dir}")
    for result in outcome.results:
        print(f"  audit {result.name:<12} {audit_state(result)}")
    shown = {"passed": "PASSED", "blocked": "BLOCKED", "needs_review": "NEEDS REVIEW"}[verdict.outcome]
    print(f"verdict: {shown} (policy {describe_policy(verdict.policy_name, verdict.policy_sha256)}, "
          f"model sha256 {verdict.model_sha256[:16]}…)")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    if verdict.review:
        print("  for a human reviewer (inconclusive: the evidence neither meets nor breaks the limit):")
        for item in verdict.review:
            print(f"  ? {item}")
    for line in verdict_explanation_lines(outcome):
        print(line)
    print(f"report: {outcome.report_html}")
    print(f"        {outcome.report_json}")
    if outcome.bundle is not None:
        print(f"bundle: {outcome.bundle} (signed and verified)")
    elif verdict.passed and outcome.export_error:
        print(f"bundle: not written: {outcome.export_error}")
    elif verdict.passed:
        print(f"bundle: export it with `secure-ft export {outcome.run_dir} --out BUNDLE`")
    elif verdict.outcome == "needs_review":
        print("bundle: not written: the verdict needs review; export releases it only under an organisation "
              "release policy whose required approvers signed off (`secure-ft approve`; README: \"Release policy "
              "and signed approvals\")")
    else:
        print("bundle: not written: the gate blocked export")
