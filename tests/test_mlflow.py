"""MLflow tracking and registry against a real `mlflow server` (SQLite backend, local artifacts, loopback).

One server serves the module; it is stopped by the process id this module started, also when
a test fails. Runs are the tiny model on toy data (`secure-ft run`) or the hand-made run of
`fake_run` (a DP run with an ε curve and audits with intervals).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is part of the test set-up: pip install -e '.[test]'")

from mlflow.tracking import MlflowClient  # noqa: E402

from fake_run import LABELS, TEXTS, make_run  # noqa: E402
from mlflow_server import MlflowServer, free_port  # noqa: E402
from secure_ft.cli import main  # noqa: E402
from secure_ft.records.run_ledger import Ledger, verify_ledger  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
    finally:
        server.stop()


def events(run_dir: Path) -> list[dict]:
    return [entry for entry in Ledger(run_dir).events()]


def run_with_tracking(tmp_path, toy_config, uri: str, *, register: str | None = None, min_gain: float = 0.1):
    """`secure-ft run` on the toy data with tracking on; (exit code, run dir, bundle or None)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"name: tiny\nrequired_audits: [performance]\nperformance:\n  min_gain_over_majority: {min_gain}\n")
    toy_config.training.epochs = 4
    toy_config.training.learning_rate = 2e-2
    toy_config.policy = str(policy)
    toy_config.tracking.mlflow.uri = uri
    toy_config.tracking.mlflow.experiment = "toy"
    toy_config.tracking.mlflow.register = register
    config_path = tmp_path / "run.yaml"
    config_path.write_text(toy_config.to_yaml())
    out = tmp_path / "out"
    code = main(["run", "--config", str(config_path), "--out", str(out)])
    (run_dir,) = [path for path in out.iterdir() if not path.name.endswith("-bundle")]
    bundle = out / f"{run_dir.name}-bundle"
    return code, run_dir, bundle if bundle.is_dir() else None


def mlflow_run_of(client: MlflowClient, run_dir: Path):
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string=f"tags.`secure_ft.run_dir` = '{run_dir.name}'")
    return run


def test_run_is_tracked_registered_and_loads_with_pyfunc_like_serve(tmp_path, toy_config, server, capsys):
    import mlflow

    code, run_dir, bundle = run_with_tracking(tmp_path, toy_config, server.uri, register="toy-complaints")
    assert code == 0 and bundle is not None, capsys.readouterr()
    client = MlflowClient(server.uri)
    run = mlflow_run_of(client, run_dir)
    verdict = json.loads((run_dir / "verdict.json").read_text())
    data = json.loads((run_dir / "data.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.data.tags["secure_ft.verdict"] == "passed"
    assert run.data.tags["secure_ft.model_sha256"] == verdict["model_sha256"]
    assert run.data.tags["secure_ft.policy_sha256"] == verdict["policy_sha256"]
    assert run.data.tags["secure_ft.data_fingerprint"] == data["fingerprint"]
    assert run.data.params["training.epochs"] == "4" and run.data.params["privacy.mode"] == "none"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "train.val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(e["epoch"], e["val_accuracy"]) for e in metrics["epochs"]]
    audit = json.loads((run_dir / "audits" / "performance.json").read_text())["metrics"]["accuracy"]
    assert run.data.metrics["audit.performance.accuracy"] == audit["value"]
    assert run.data.metrics["audit.performance.accuracy.ci_lower"] == audit["ci_lower"]
    assert run.data.metrics["audit.performance.accuracy.ci_upper"] == audit["ci_upper"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"audit_report.html", "audit_report.json", "verdict.dsse.json", "config.yaml"} <= artifacts

    # registered with the signed verdict's facts, linked to the tracked run
    (version,) = client.search_model_versions("name = 'toy-complaints'")
    assert version.run_id == run.info.run_id
    # the MLflow run ends when the run did (its export), also after registering reopened it
    from datetime import datetime
    (export,) = [entry for entry in events(run_dir) if entry["event"] == "export"]
    assert run.info.end_time == int(datetime.fromisoformat(export["timestamp"]).timestamp() * 1000)
    assert version.tags["secure_ft.verdict"] == "passed" and version.tags["secure_ft.policy_name"] == "tiny"
    assert version.tags["secure_ft.model_sha256"] == verdict["model_sha256"]
    import hashlib
    assert version.tags["secure_ft.bundle_sha256"] == hashlib.sha256((bundle / "bundle.sig").read_bytes()).hexdigest()
    logged = [entry["event"] for entry in events(run_dir)]
    assert logged[-3:] == ["export", "mlflow_synced", "mlflow_registered"]
    assert verify_ledger(run_dir) == len(logged)

    # pyfunc predictions are serve's: the same classifier over the same verified bundle
    from secure_ft.serving.bundle_loader import load_verified_bundle
    from secure_ft.serving.classifier import BundleClassifier

    texts = ["loan was denied and the fee is late", "my card got a fraud charge", "mortgage payment"]
    mlflow.set_tracking_uri(server.uri)
    try:
        predicted = mlflow.pyfunc.load_model("models:/toy-complaints/1").predict(texts)
    finally:
        mlflow.set_tracking_uri(None)
    served = BundleClassifier.from_bundle(load_verified_bundle(bundle), device="cpu")
    expected = served.probabilities(texts)
    assert list(predicted["label"]) == served.label_names(expected)
    assert [list(row) for row in predicted["probabilities"]] == expected.tolist()

    capsys.readouterr()
    assert main(["verify", "models:/toy-complaints/1", "--tracking-uri", server.uri]) == 0
    assert "bundle OK: models:/toy-complaints/1" in capsys.readouterr().out

    # the MLflow wrapper beside the bundle is not signed: verify reads its pickle (never unpickles it)
    (wrapper,) = [path for path in server.artifacts.rglob("python_model.pkl")]
    original = wrapper.read_bytes()
    import pickle
    wrapper.write_bytes(pickle.dumps(print))  # any callable other than BundleModel
    assert main(["verify", "models:/toy-complaints/1", "--tracking-uri", server.uri]) == 4
    assert "builtins.print" in capsys.readouterr().err
    wrapper.write_bytes(original)

    # a file replaced in the registry's artifact store: verify fails, and pyfunc refuses to load it
    (report,) = [path for path in server.artifacts.rglob("bundle/audit_report.json")]
    report.write_text(report.read_text().replace('"passed"', '"PASSED"', 1))
    assert main(["verify", "models:/toy-complaints/1", "--tracking-uri", server.uri]) == 4
    assert "audit_report.json" in capsys.readouterr().err
    from secure_ft.errors import BundleError

    mlflow.set_tracking_uri(server.uri)
    try:
        with pytest.raises(BundleError, match="audit_report.json"):
            mlflow.pyfunc.load_model("models:/toy-complaints/1")
    finally:
        mlflow.set_tracking_uri(None)


def test_dp_run_logs_the_epsilon_curve_and_syncs_once(tmp_path, server, capsys):
    fake = make_run(tmp_path)
    assert main(["mlflow", "sync", str(fake.run_dir), "--tracking-uri", server.uri, "--experiment", "dp"]) == 0
    client = MlflowClient(server.uri)
    run = mlflow_run_of(client, fake.run_dir)
    privacy = json.loads((fake.run_dir / "privacy.json").read_text())
    curve = client.get_metric_history(run.info.run_id, "privacy.epsilon")
    assert sorted((m.step, m.value) for m in curve) == [tuple(item) for item in privacy["epsilon_history"]]
    per_epoch = client.get_metric_history(run.info.run_id, "train.epsilon")
    assert sorted((m.step, m.value) for m in per_epoch) == [(1, 1.1), (2, 2.2), (3, 1.1 * 3)]
    assert run.data.tags["secure_ft.epsilon"] == "3.2" and run.data.tags["secure_ft.delta"] == "1e-05"
    assert run.data.metrics["audit.fairness.columns.older_american.summary.equalized_odds_difference.ci_upper"] == 0.16
    assert run.data.metrics["check.privacy.run.epsilon"] == 3.2
    assert "privacy.json" in {item.path for item in client.list_artifacts(run.info.run_id)}
    # MLflow shows when the run happened (its ledger), not when it was uploaded
    from datetime import datetime
    ledger = [entry for entry in events(fake.run_dir) if not entry["event"].startswith("mlflow_")]
    stamp = lambda entry: int(datetime.fromisoformat(entry["timestamp"]).timestamp() * 1000)  # noqa: E731
    assert (run.info.start_time, run.info.end_time) == (stamp(ledger[0]), stamp(ledger[-1]))
    # a second sync finds the complete run and uploads nothing
    capsys.readouterr()
    assert main(["mlflow", "sync", str(fake.run_dir), "--tracking-uri", server.uri, "--experiment", "dp"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_blocked_or_unverifiable_runs_cannot_be_registered(tmp_path, server, capsys):
    blocked = make_run(tmp_path / "blocked", passing=False)
    assert main(["export", str(blocked.run_dir), "--out", str(tmp_path / "b1"), "--register", "never",
                 "--tracking-uri", server.uri]) == 3
    passing = make_run(tmp_path / "passing")
    bundle = tmp_path / "b2"
    assert main(["export", str(passing.run_dir), "--out", str(bundle)]) == 0
    (bundle / "policy.yaml").write_text((bundle / "policy.yaml").read_text() + "\n# edited\n")
    assert main(["mlflow", "register", str(bundle), "never", "--tracking-uri", server.uri]) == 4
    client = MlflowClient(server.uri)
    assert client.search_model_versions("name = 'never'") == []


def test_server_down_loses_nothing_and_sync_uploads_afterwards(tmp_path, toy_config, server, capsys, caplog):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is down for the whole run
    with caplog.at_level(logging.WARNING):
        code, run_dir, bundle = run_with_tracking(tmp_path, toy_config, dead, register="toy-down")
    assert code == 0 and bundle is not None  # the run, its verdict and its bundle stand
    warnings = [record.getMessage() for record in caplog.records if "MLflow tracking failed" in record.getMessage()]
    assert len(warnings) == 1 and "secure-ft mlflow sync" in warnings[0]
    failed = [entry for entry in events(run_dir) if entry["event"].startswith("mlflow_")]
    assert [entry["event"] for entry in failed] == ["mlflow_sync_failed", "mlflow_register_failed"]
    assert verify_ledger(run_dir) == len(events(run_dir))

    capsys.readouterr()
    assert main(["mlflow", "sync", str(run_dir), "--tracking-uri", server.uri]) == 0
    assert "uploaded" in capsys.readouterr().out
    run = mlflow_run_of(MlflowClient(server.uri), run_dir)
    assert run.data.tags["secure_ft.verdict"] == "passed" and run.info.status == "FINISHED"
    assert events(run_dir)[-1]["event"] == "mlflow_synced"


def test_tracking_off_by_default_never_imports_mlflow(tmp_path, monkeypatch):
    from secure_ft.pipeline.main_job import PipelineOutcome, show_in_mlflow

    fake = make_run(tmp_path)
    for name in [name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any `import mlflow` now raises ImportError
    show_in_mlflow(PipelineOutcome(fake.run_dir, fake.verdict, fake.results, None, None, None))
    assert not [entry for entry in events(fake.run_dir) if entry["event"].startswith("mlflow_")]
    # with a URI configured but no mlflow installed, the run still stands: one warning, one ledger line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    show_in_mlflow(PipelineOutcome(fake.run_dir, fake.verdict, fake.results, None, None, None))
    (failed,) = [entry for entry in events(fake.run_dir) if entry["event"].startswith("mlflow_")]
    assert failed["event"] == "mlflow_sync_failed" and "secure-ft[mlflow]" in failed["data"]["reason"]


def test_federated_run_metrics_per_round_and_site(tmp_path):
    from secure_ft.pipeline.mlflow_tracking import collect_metrics

    site = lambda name, epsilon, loss: {"site": name, "phase": "train", "status": "accepted",  # noqa: E731
                                        "metrics": {"epsilon": epsilon, "train-loss": loss, "delta": 1e-5}}
    (tmp_path / "metrics.json").write_text(json.dumps({
        "epochs": [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}],
        "rounds": [{"round": 1, "sites": [site("a", 1.0, 0.9), site("b", 1.2, 0.8)]},
                   {"round": 2, "sites": [site("a", 1.5, 0.7), {**site("b", 9.9, 0.1), "phase": "evaluate"}]}]}))
    (tmp_path / "privacy.json").write_text(json.dumps({
        "epsilon": 1.7, "delta": 1e-5, "sites": {"a": {"epsilon": 1.5, "delta": 1e-5}, "b": {"epsilon": 1.7,
                                                                                            "delta": 1e-5}},
        "central": {"epsilon": 0.9, "delta": 1e-5}}))
    rows = collect_metrics(tmp_path)
    assert ("round.site.a.epsilon", 1.0, 1) in rows and ("round.site.a.epsilon", 1.5, 2) in rows
    assert ("round.site.b.train_loss", 0.8, 1) in rows
    assert not [row for row in rows if row[0].startswith("round.site.b") and row[2] == 2]  # evaluation replies
    assert ("privacy.site.b.epsilon", 1.7, 0) in rows and ("privacy.central.epsilon", 0.9, 0) in rows
    assert [row for row in rows if row[0] == "train.val_accuracy"] == [("train.val_accuracy", 0.5, 1),
                                                                       ("train.val_accuracy", 0.6, 2)]


def test_upload_cut_off_midway_is_marked_failed_and_the_next_sync_completes(tmp_path, server, monkeypatch):
    from mlflow.tracking import MlflowClient as Client

    from secure_ft.pipeline.mlflow_tracking import TrackingError, sync_run

    fake = make_run(tmp_path)
    real = Client.log_artifact
    calls = []

    def dropped(self, run_id, local_path, artifact_path=None):
        calls.append(local_path)
        if len(calls) == 3:  # the connection drops half-way through the artifacts
            raise ConnectionResetError("connection reset by peer")
        return real(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(Client, "log_artifact", dropped)
    with pytest.raises(TrackingError, match="secure-ft mlflow sync"):
        sync_run(fake.run_dir, server.uri, experiment="cut")
    monkeypatch.setattr(Client, "log_artifact", real)
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("cut").experiment_id
    (cut,) = client.search_runs([experiment])
    assert cut.info.status == "FAILED" and "secure_ft.sync_complete" not in cut.data.tags
    result = sync_run(fake.run_dir, server.uri, experiment="cut")
    assert not result.already_synced and result.run_id != cut.info.run_id
    complete = client.get_run(result.run_id)
    assert complete.info.status == "FINISHED" and complete.data.tags["secure_ft.sync_complete"] == "true"
    assert sync_run(fake.run_dir, server.uri, experiment="cut").already_synced
