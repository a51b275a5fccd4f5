"""Robustness audit end to end on tiny models: brittleness found, numbers recountable, offline, policy-decided."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from robustness_helpers import KEYWORD, keyword_splits, network_blocked, session_resources, train_brittle_model

from audits._intervals import wilson
from audits.context import AuditContext
from audits.registry import run_audit
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import Policy, RobustnessPolicy

STRICT = Policy(robustness=RobustnessPolicy(min_accuracy_under_attack={"default": 0.5},
                                            max_attack_success_rate={"default": 0.5}))


@pytest.fixture(scope="session")
def resources_dir(tmp_path_factory) -> Path:
    return session_resources(tmp_path_factory).root


@pytest.fixture(scope="session")
def brittle_model(tmp_path_factory) -> Path:
    return train_brittle_model(tmp_path_factory.mktemp("brittle"))


def audit_config(resources_dir: Path, **robustness) -> RunConfig:
    # the stock recipes, judged: what these tests check (label-preserving ones: test_label_preserving.py)
    settings = {"num_examples": 16, "query_budget": 300, "workers": 1, "resources_dir": str(resources_dir),
                "recipes": ["deepwordbug", "pwws", "embedding-swap"], "stress_recipes": [],
                "embedding_swap": {"max_candidates": 5}, **robustness}
    return RunConfig.model_validate({"seed": 7, "model": {"max_length": 16}, "audits": {"robustness": settings}})


def run_robustness(run_dir: Path, model_dir: Path, config: RunConfig, policy: Policy = STRICT):
    context = AuditContext(run_dir=run_dir, model_dir=model_dir, splits=keyword_splits(), config=config, policy=policy)
    return run_audit("robustness", context)


@pytest.fixture(scope="module")
def brittle_audit(tmp_path_factory, brittle_model, resources_dir):
    """All default recipes against the brittle model, with every socket connect refused."""
    run_dir = tmp_path_factory.mktemp("run")
    with network_blocked() as attempts:
        result = run_robustness(run_dir, brittle_model, audit_config(resources_dir))
    return result, run_dir, attempts


def test_brittle_classifier_has_high_attack_success_rate(brittle_audit):
    result, _, _ = brittle_audit
    assert result.error is None, result.error
    recipes = result.metrics["recipes"]
    assert set(recipes) == {"deepwordbug", "pwws", "embedding-swap"}
    for name in ("deepwordbug", "pwws"):
        assert recipes[name]["original_accuracy"] >= 0.9
        assert recipes[name]["attack_success_rate"]["value"] >= 0.7, (name, recipes[name])
        assert recipes[name]["accuracy_under_attack"]["value"] <= 0.3
    assert not result.passed
    failed = {check.name for check in result.checks if not check.passed}
    assert {"deepwordbug.accuracy_under_attack", "deepwordbug.attack_success_rate"} <= failed


@pytest.mark.parametrize("recipe", ["deepwordbug", "pwws"])
def test_every_keyword_text_is_broken(brittle_audit, recipe):
    result, run_dir, _ = brittle_audit
    evidence = pd.read_csv(run_dir / result.evidence[0])
    keyword_rows = evidence[(evidence["recipe"] == recipe) & (evidence["label"] == 1)]
    assert len(keyword_rows) >= 10
    assert (keyword_rows["result"] == "succeeded").all()
    # the attack replaced or misspelt the keyword itself, and little else
    assert not keyword_rows["perturbed_text"].str.split().apply(lambda words: KEYWORD in words).any()
    assert (keyword_rows["words_changed"] <= 2).all()


def test_audit_never_touched_the_network(brittle_audit):
    _, _, attempts = brittle_audit
    assert attempts == []


def test_metrics_match_a_recount_from_the_evidence_csv(brittle_audit):
    result, run_dir, _ = brittle_audit
    # the adversarial pairs, and the judged recipes' successes for a human reviewer
    assert result.evidence == ["audits/robustness/adversarial_examples.csv", "audits/robustness/review_sheet.csv"]
    evidence = pd.read_csv(run_dir / result.evidence[0])
    assert len(evidence) == 3 * result.metrics["num_examples"]
    for name, metrics in result.metrics["recipes"].items():
        rows = evidence[evidence["recipe"] == name]
        succeeded, failed, skipped = ((rows["result"] == status).sum() for status in ("succeeded", "failed", "skipped"))
        attempted = rows[rows["result"] != "skipped"]
        assert metrics["examples"] == len(rows)
        assert (metrics["succeeded"], metrics["failed"], metrics["skipped"]) == (succeeded, failed, skipped)
        assert metrics["original_accuracy"] == pytest.approx((rows["original_prediction"] == rows["label"]).mean())
        assert metrics["accuracy_under_attack"]["value"] == pytest.approx(failed / len(rows))
        low, high = wilson(failed, len(rows))
        assert (metrics["accuracy_under_attack"]["ci_lower"], metrics["accuracy_under_attack"]["ci_upper"]) == \
            pytest.approx((low, high))
        assert metrics["attacked"] == succeeded + failed
        if succeeded + failed:
            assert metrics["attack_success_rate"]["value"] == pytest.approx(succeeded / (succeeded + failed))
            assert metrics["avg_queries"] == pytest.approx(attempted["num_queries"].mean())
        if succeeded:
            wins = rows[rows["result"] == "succeeded"]
            assert metrics["avg_perturbed_word_pct"] == pytest.approx(
                (100 * wins["words_changed"] / wins["word_count"]).mean())
            # a success changed the model's answer away from the truth, by changing the text
            assert (wins["perturbed_prediction"] != wins["label"]).all()
            assert (wins["perturbed_text"] != wins["original_text"]).all()
        assert metrics["budget_exhausted"] == int(rows["budget_exhausted"].sum())
        assert metrics["budget_exhausted_fraction"]["value"] == pytest.approx(
            rows["budget_exhausted"].sum() / len(attempted) if len(attempted) else 0.0)


def test_result_lists_constraints_and_keeps_text_out_of_metrics(brittle_audit):
    result, run_dir, _ = brittle_audit
    swap = result.metrics["recipes"]["embedding-swap"]
    kinds = " ".join(swap["constraints"])
    for expected in ("StopwordModification", "WordEmbeddingDistance", "WordNetAntonymFilter", "LocalSentenceEncoder"):
        assert expected in kinds
    assert "LevenshteinEditDistance" in " ".join(result.metrics["recipes"]["deepwordbug"]["constraints"])
    serialised = json.dumps(result.to_dict())
    evidence = pd.read_csv(run_dir / result.evidence[0])
    for text in set(evidence["original_text"]) | set(evidence["perturbed_text"]):
        assert text not in serialised


def test_recipe_that_cannot_run_fails_the_audit_with_its_reason(tmp_path, brittle_model, resources_dir):
    config = audit_config(resources_dir, num_examples=4, recipes=["deepwordbug", "textfooler", "no-such-recipe"])
    with network_blocked() as attempts:
        result = run_robustness(tmp_path, brittle_model, config, policy=Policy())
    assert attempts == []
    assert not result.passed
    assert "recipe textfooler" in result.error and "download" in result.error
    assert "no-such-recipe" in result.error and "pwws" in result.error  # lists the known recipes
    assert list(result.metrics["recipes"]) == ["deepwordbug"]  # the recipe that could run still reports
    assert result.failure_reasons() == [f"robustness: could not run: {result.error}"]


def test_thresholds_decide_passed(brittle_audit):
    from audits.robustness import recipe_checks

    result, _, _ = brittle_audit
    summary = result.metrics["recipes"]["deepwordbug"]
    lenient = RobustnessPolicy(min_accuracy_under_attack={"default": 0.0}, max_attack_success_rate={"default": 1.0})
    assert all(check.passed for check in recipe_checks("deepwordbug", summary, lenient))
    per_recipe = RobustnessPolicy(min_accuracy_under_attack={"default": 0.0, "deepwordbug": 0.9})
    [check] = recipe_checks("deepwordbug", summary, per_recipe)
    assert (check.name, check.threshold, check.passed) == ("deepwordbug.accuracy_under_attack", 0.9, False)
    assert recipe_checks("deepwordbug", summary, RobustnessPolicy()) == []
    starved = {**summary, "budget_exhausted_fraction": 0.6}
    [check] = recipe_checks("pwws", starved, RobustnessPolicy(max_budget_exhausted_fraction={"default": 0.5}))
    assert (check.name, check.passed) == ("pwws.budget_exhausted_fraction", False)
    nothing_attacked = {**summary, "attack_success_rate": None}
    [check] = recipe_checks("pwws", nothing_attacked, RobustnessPolicy(max_attack_success_rate={"default": 0.5}))
    assert not check.passed and "no example was attacked" in check.note


def test_interrupted_audit_resumes_from_progress(tmp_path, brittle_model, resources_dir, monkeypatch):
    from audits._attack_progress import ProgressStore

    config = audit_config(resources_dir, num_examples=6, recipes=["deepwordbug"])
    monkeypatch.setattr(ProgressStore, "remove", lambda self: None)  # as if the run stopped before cleaning up
    first = run_robustness(tmp_path, brittle_model, config)
    progress = tmp_path / "audits" / "robustness" / ".progress.jsonl"
    lines = progress.read_text().splitlines()
    assert len(lines) == 1 + 6
    progress.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # 3 records kept, the 4th cut short
    second = run_robustness(tmp_path, brittle_model, config)
    assert second.metrics["recipes"]["deepwordbug"]["resumed_examples"] == 3
    keys = ("succeeded", "failed", "skipped", "avg_queries", "avg_perturbed_word_pct")
    assert {k: second.metrics["recipes"]["deepwordbug"][k] for k in keys} == \
        {k: first.metrics["recipes"]["deepwordbug"][k] for k in keys}
    # other settings → the old progress is not reused
    third = run_robustness(tmp_path, brittle_model, audit_config(resources_dir, num_examples=6, recipes=["deepwordbug"],
                                                                 query_budget=50))
    assert third.metrics["recipes"]["deepwordbug"]["resumed_examples"] == 0


def test_the_policy_can_judge_the_wilson_bound():
    from audits.robustness import rate, recipe_checks

    summary = {"accuracy_under_attack": rate(30, 100), "attack_success_rate": rate(60, 90)}
    lenient = {"min_accuracy_under_attack": {"default": 0.25}, "max_attack_success_rate": {"default": 0.7}}
    point = recipe_checks("deepwordbug", summary, RobustnessPolicy(**lenient))
    bound = recipe_checks("deepwordbug", summary, RobustnessPolicy(**lenient, use_ci_bound=True))
    assert [check.actual for check in point] == [0.3, pytest.approx(60 / 90)] and all(c.passed for c in point)
    assert [check.actual for check in bound] == pytest.approx([wilson(30, 100)[0], wilson(60, 90)[1]])
    assert not any(check.passed for check in bound)  # 0.21 < 0.25 and 0.76 > 0.7: pessimistic ends fail
    assert "lower 95% CI bound" in bound[0].note and "upper 95% CI bound" in bound[1].note


def test_default_sample_attacks_enough_correct_texts(tmp_path, brittle_model, resources_dir):
    """num_examples: null walks the seeded order until min_correct_examples texts are right (here 5)."""
    config = audit_config(resources_dir, num_examples=None, min_correct_examples=5, recipes=["deepwordbug"])
    result = run_robustness(tmp_path, brittle_model, config)
    summary = result.metrics["recipes"]["deepwordbug"]
    assert summary["attacked"] == 5 and result.metrics["min_correct_examples"] == 5
    evidence = pd.read_csv(tmp_path / result.evidence[0]).sort_values("example")
    assert evidence["result"].iloc[-1] != "skipped"  # stops at the 5th correct text, not later
    everything = run_robustness(tmp_path / "all", brittle_model, audit_config(
        resources_dir, num_examples=None, min_correct_examples=1000, recipes=["deepwordbug"], query_budget=20))
    assert everything.metrics["num_examples"] == 24  # fewer correct texts than wanted: the whole test split


def test_defaults_attack_at_least_100_correct_texts_and_the_shipped_policy_judges_the_bound():
    from secure_ft.records.config import RobustnessAuditConfig
    from secure_ft.records.policy import load_policy

    defaults = RobustnessAuditConfig()
    assert defaults.num_examples is None and defaults.min_correct_examples >= 100 and defaults.query_budget >= 200
    policy, _ = load_policy()
    assert policy.robustness.use_ci_bound is True
    assert policy.robustness.max_budget_exhausted_fraction == {"default": 0.10}


def test_wilson_interval_matches_the_formula():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(100, 100)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)


@pytest.mark.slow
def test_two_workers_give_the_same_records_as_one(tmp_path, brittle_model, resources_dir):
    config = audit_config(resources_dir, num_examples=10, recipes=["deepwordbug", "pwws"])
    one = run_robustness(tmp_path / "one", brittle_model, config)
    two = run_robustness(tmp_path / "two", brittle_model, audit_config(resources_dir, num_examples=10,
                                                                       recipes=["deepwordbug", "pwws"], workers=2))
    assert two.error is None and two.metrics["workers"] == 2
    columns = ["recipe", "example", "result", "num_queries", "perturbed_text"]
    frames = [pd.read_csv(run / "audits" / "robustness" / "adversarial_examples.csv")[columns]
              for run in (tmp_path / "one", tmp_path / "two")]
    pd.testing.assert_frame_equal(*frames)
    assert one.metrics["recipes"]["pwws"]["attack_success_rate"] == two.metrics["recipes"]["pwws"]["attack_success_rate"]


@pytest.mark.slow
def test_default_recipes_run_offline_on_the_packaged_model(tmp_path, resources_dir):
    """The real default encoder (fresh head): every default recipe builds and runs with the network cut."""
    from secure_ft.records.config import ModelConfig
    from secure_ft.text.models import load_base_model, save_trained_model

    splits = keyword_splits(test_rows=8)
    model, tokenizer = load_base_model(ModelConfig(max_length=32), splits.label_names)
    model_dir = tmp_path / "model"
    save_trained_model(model, tokenizer, model_dir)
    config = RunConfig.model_validate({"model": {"max_length": 32}, "audits": {"robustness": {
        "num_examples": 3, "query_budget": 25, "workers": 1, "resources_dir": str(resources_dir)}}})
    with network_blocked() as attempts:
        result = run_audit("robustness", AuditContext(run_dir=tmp_path, model_dir=model_dir, splits=splits,
                                                      config=config, policy=Policy()))
    assert attempts == []
    assert result.error is None, result.error
    # judged: the label-preserving recipes (independent encoder, spaCy tagger: all offline); stock ones as stress
    assert set(result.metrics["recipes"]) == {"deepwordbug-lp", "pwws-lp", "embedding-swap-lp"}
    assert set(result.metrics["stress_recipes"]) == {"deepwordbug", "pwws", "embedding-swap"}
    assert len(pd.read_csv(tmp_path / result.evidence[0])) == 18  # 3 texts, fewer correct than the stress sample wants


@pytest.mark.slow
def test_a_probe_on_its_onnx_graph_is_attacked_on_that_graph(tmp_path, brittle_model, resources_dir, monkeypatch):
    """The attacks query the model folder's exported encoder graph (secure_ft.text.onnx_encoder), word swaps included."""
    from secure_ft.records.model_identity import model_digest
    from secure_ft.text.models import load_trained_model, save_trained_model
    from secure_ft.text.onnx_encoder import GraphSequenceClassifier, encoder_graph
    from secure_ft.text.pooling import MEAN_NORMALIZED, use_mean_pooling

    model, tokenizer = load_trained_model(brittle_model)
    assert use_mean_pooling(model, MEAN_NORMALIZED)
    graph = encoder_graph(model, tokenizer, model_digest(brittle_model), MEAN_NORMALIZED, cache=tmp_path / "cache")
    model_dir = tmp_path / "model"
    save_trained_model(model, tokenizer, model_dir, encoder_graph=graph)
    queried = []
    real_forward = GraphSequenceClassifier.forward

    def recording(self, **inputs):
        queried.append(len(inputs["input_ids"]))
        return real_forward(self, **inputs)

    monkeypatch.setattr(GraphSequenceClassifier, "forward", recording)  # workers: 1 attacks in this process
    config = audit_config(resources_dir, num_examples=4, recipes=["deepwordbug", "embedding-swap"])
    result = run_robustness(tmp_path / "run", model_dir, config)
    assert result.error is None, result.error
    assert set(result.metrics["recipes"]) == {"deepwordbug", "embedding-swap"}
    assert queried, "no attack query ran on the graph"
