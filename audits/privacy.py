"""Privacy audit: the run's formal guarantee, and what an attacker can actually infer.

1. **Guarantee.** ε and δ from the run's ``privacy.json`` (see :mod:`audits._guarantee` for the
   schema): for a central run its (ε, δ); for a federated run also the central aggregate's and
   every site's. Each is checked against ``policy.privacy.max_epsilon`` / ``max_delta``. A run
   without ``privacy.json`` was trained without differential privacy and fails a policy with
   ``require_dp: true``, saying so.
2. **Membership inference** (:mod:`audits._membership`). Equal numbers of members (a seeded
   sample of the train split) and non-members (the test split, topped up from validation;
   rows whose text also occurs in train are left out) are scored by the trained model. The
   ``loss`` attack scores a row by its negative loss; the ``calibrated`` attack by how much
   lower its loss is under the trained model than under the pretrained base model (with a
   classification head seeded by the run's seed), which removes per-row difficulty. The
   policy checks the strongest attack on each metric.
3. **Canaries** (optional, ``audits.privacy.canaries > 0``, :mod:`audits._canary`): exposure of
   random secrets inserted into a throw-away run with the same recipe.

Metric keys (``AuditResult.metrics``)
-------------------------------------
``guarantee``: {``dp`` (bool), ``source`` (file name or null), ``epsilon``, ``delta`` (the run's,
or the central aggregate's; null if none), ``epsilon_unbounded`` (bool), ``scopes``:
[{``scope`` ("run" | "central" | "site:<name>"), ``epsilon`` (null = unbounded), ``delta``}],
and as recorded: ``accountant``, ``noise_multiplier``, ``max_grad_norm``, ``sample_rate``,
``steps``, ``epochs``, ``dataset_size``, ``trained``, ``opacus_version``, ``epsilon_history``}.
``membership``: {``n_members``, ``n_non_members``, ``non_member_sources`` {split: rows},
``excluded_duplicates``, ``n_boot``, ``ci_level``, ``seed``,
``attacks``: {"loss" | "calibrated": {``auc``, ``balanced_accuracy``, ``advantage``,
``tpr_at_1pct_fpr``, ``tpr_at_0_1pct_fpr`` (each ``{"value", "ci_lower", "ci_upper"}``),
``roc_curve`` [[fpr, tpr], ...] (≤ 200 points), ``fpr_resolution``, ``mean_score``
{members, non_members}, ``empirical_epsilon`` {``point_estimate``, ``point_estimate_at``
{fpr, tpr}, ``lower_bound``, ``confidence``, ``delta``, ``method``}}},
``strongest``: {metric: {``attack``, ``value``, ``ci_lower``, ``ci_upper``}}}.
``epsilon_comparison``: {``accountant_epsilon`` (null if none or unbounded),
``empirical_lower_bound``, ``empirical_point_estimate`` (largest over attacks)}.
``canary``: null, or {``canaries`` [{``sha256``, ``rank``, ``exposure``}], ``count``, ``repeats``,
``candidates``, ``steps``, ``dp``, ``noise_multiplier``, ``max_grad_norm``, ``noise_from`` (the run, or a
federation's least noisy site), ``mean_exposure``,
``max_exposure``, ``max_possible_exposure``, ``chance_exposure``, ``format``}.

Evidence (under ``audits/privacy/``): ``roc_<attack>.csv`` (every ROC point) and, with
canaries, ``canaries.csv`` (hashes, ranks, exposures).
"""

from __future__ import annotations

import gc
import io
import math

import numpy as np
import pandas as pd
import torch

from audits._canary import canary_report
from audits._guarantee import PrivacyGuarantee, read_guarantee
from audits._intervals import finite_or_none
from audits._membership import attack_report, default_delta, full_roc
from audits._scoring import load_model_for, score_split
from audits.context import AuditContext
from audits.registry import register
from audits._epsilon_recompute import recomputation_checks
from audits.policy_checks import threshold_checks
from audits.result import AuditResult, Check
from secure_ft.errors import AuditError, ModelError
from secure_ft.records.atomic_files import atomic_write_text
from secure_ft.text.models import load_base_model, predict

NAME = "privacy"
MIN_ATTACK_ROWS = 10



def guarantee_metrics(guarantee: PrivacyGuarantee | None) -> dict:
    if guarantee is None:
        return {"dp": False, "source": None, "epsilon": None, "delta": None, "epsilon_unbounded": True, "scopes": []}
    main = next((s for s in guarantee.scopes if s.scope in ("run", "central")), None)
    return {
        "dp": True,
        "source": guarantee.path.name,
        "epsilon": finite_or_none(main.epsilon) if main else None,
        "delta": main.delta if main else None,
        "epsilon_unbounded": bool(main is not None and math.isinf(main.epsilon)),
        "scopes": [{"scope": s.scope, "epsilon": finite_or_none(s.epsilon), "delta": s.delta} for s in guarantee.scopes],
        **guarantee.details,
    }


def guarantee_checks(guarantee: PrivacyGuarantee | None, policy) -> tuple[list[Check], list[str]]:
    checks, notes = [], []
    if guarantee is None:
        reason = "no privacy.json in the run directory: the model was trained without differential privacy"
        if policy.require_dp:
            checks.append(Check.evaluate("dp_guarantee", 0, "==", 1, note=reason))
        else:
            notes.append(f"{reason}; the policy does not require DP, so ε and δ are not checked")
        return checks, notes
    if policy.require_dp:
        checks.append(Check.evaluate("dp_guarantee", 1, "==", 1, note=f"{guarantee.path.name} present"))
    for scope in guarantee.scopes:
        prefix = "" if scope.scope == "run" else f"{scope.scope}."
        measured = {"epsilon": None if math.isinf(scope.epsilon) else scope.epsilon, "delta": scope.delta}
        checks += threshold_checks(policy, measured, group="guarantee", scope=prefix,
                                   missing_note="unbounded: the accountant gave no finite ε")
    return checks, notes


def worst_attack_measurements(attacks: dict[str, dict], use_ci_bound: bool) -> dict[str, tuple[str, dict]]:
    """Per membership metric, the attack variant that leaked most and its estimate (judged bound first)."""
    bound = "ci_upper" if use_ci_bound else "value"
    worst = {}
    estimates = {metric for report in attacks.values() for metric, value in report.items()
                 if isinstance(value, dict) and "value" in value}
    for metric in sorted(estimates):
        def leak(attack: str) -> float:
            value = attacks[attack].get(metric, {}).get(bound)
            return value if value is not None else math.inf
        name = max(attacks, key=leak)
        worst[metric] = (name, attacks[name].get(metric))
    return worst


def attack_rows(context: AuditContext) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Equal-size seeded samples of members and non-members, and where they came from."""
    splits, seed = context.splits, context.config.seed
    train = splits.train
    pool = pd.concat([splits.test.sample(frac=1, random_state=seed).assign(_split="test"),
                      splits.validation.sample(frac=1, random_state=seed).assign(_split="validation")])
    duplicates = pool["text"].isin(set(train["text"]))
    pool = pool[~duplicates]
    size = min(context.config.audits.privacy.membership_examples, len(train), len(pool))
    if size < MIN_ATTACK_ROWS:
        raise AuditError(
            f"membership inference needs at least {MIN_ATTACK_ROWS} members and non-members; the splits give "
            f"{len(train)} training rows and {len(pool)} held-out rows not seen in training"
        )
    members = train.sample(n=size, random_state=seed)
    nonmembers = pool.head(size)
    info = {"excluded_duplicates": int(duplicates.sum()),
            "non_member_sources": {str(k): int(v) for k, v in nonmembers["_split"].value_counts().items()}}
    return members, nonmembers.drop(columns="_split"), info


def base_model_losses(context: AuditContext, frames: list[pd.DataFrame]) -> list[np.ndarray]:
    """Per-row losses under the pretrained base model, its head seeded by the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.config.seed)
        model, tokenizer = load_base_model(context.config.model, list(context.splits.label_names))
    model.to(context.device).eval()
    losses = []
    for frame in frames:
        outputs = predict(model, tokenizer, frame["text"].tolist(), labels=frame["label"].astype(int).tolist(),
                          max_length=context.config.model.max_length,
                          batch_size=context.config.training.eval_batch_size, device=context.device)
        losses.append(outputs.losses.numpy().astype(float))
    return losses


def strongest(attacks: dict[str, dict]) -> dict:
    """Per metric, the attack with the highest point estimate (the one the policy judges)."""
    result = {}
    for metric in ("auc", "balanced_accuracy", "advantage", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
        name = max(attacks, key=lambda attack: attacks[attack][metric]["value"])
        result[metric] = {"attack": name, **attacks[name][metric]}
    return result


def _write_csv(context: AuditContext, filename: str, table: pd.DataFrame) -> str:
    path = context.evidence_dir(NAME) / filename
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())
    return str(path.relative_to(context.run_dir))


MEMBERS_AT_SITES = ("the sites' training rows never left the sites, so the coordinator holds no members to attack; "
                    "each site's DP guarantee is what bounds membership inference (a policy that sets membership "
                    "thresholds cannot pass a deployed run)")


def _membership(context: AuditContext, guarantee, policy, settings, notes: list[str]):
    """The membership-inference attacks on members (train) vs non-members (held out)."""
    members, nonmembers, sources = attack_rows(context)
    classifier = load_model_for(context)
    member_losses = score_split(classifier, members, context).losses
    nonmember_losses = score_split(classifier, nonmembers, context).losses
    front_end = classifier.describe_front_end()
    if front_end is not None and front_end.get("uses_private_vocabulary"):
        notes.append("the model's spelling front end holds words from the training data; that dictionary is NOT "
                     "covered by the DP guarantee (it shows which words occur in the data)")
    # the calibrating base model reads what the trained model read: the front end's output
    members_read = members.assign(text=classifier.model_inputs(members["text"].tolist()))
    nonmembers_read = nonmembers.assign(text=classifier.model_inputs(nonmembers["text"].tolist()))
    del classifier
    gc.collect()
    delta = guarantee.delta if guarantee is not None and guarantee.delta is not None else default_delta(len(context.splits.train))
    rng = np.random.default_rng(context.config.seed)
    options = {"n_boot": settings.n_boot, "ci_level": settings.ci_level, "rng": rng, "delta": delta}
    scores = {"loss": (-member_losses, -nonmember_losses)}
    if settings.calibrated_attack:
        try:
            base_members, base_nonmembers = base_model_losses(context, [members_read, nonmembers_read])
            scores["calibrated"] = (base_members - member_losses, base_nonmembers - nonmember_losses)
        except ModelError as error:
            notes.append(f"calibrated attack skipped: the base model could not be loaded ({error})")
    attacks = {name: attack_report(m, n, **options) for name, (m, n) in scores.items()}
    evidence = []
    for name, (m, n) in scores.items():
        fpr, tpr = full_roc(m, n)
        evidence.append(_write_csv(context, f"roc_{name}.csv", pd.DataFrame({"fpr": fpr, "tpr": tpr})))

    top = strongest(attacks)
    worst = worst_attack_measurements(attacks, policy.use_ci_bound)
    checks = threshold_checks(policy, {metric: estimate for metric, (_, estimate) in worst.items()},
                               group="membership", ci_level=settings.ci_level,
                               notes={metric: f"strongest attack: {name}" for metric, (name, _) in worst.items()})
    if len(nonmembers) < 1000:
        notes.append(f"TPR at 0.1% FPR is measured at FPR 0 (resolution 1/{len(nonmembers)} non-members)")

    membership = {
        "n_members": int(len(members)),
        "n_non_members": int(len(nonmembers)),
        **sources,
        "n_boot": settings.n_boot,
        "ci_level": settings.ci_level,
        "seed": context.config.seed,
        "attacks": attacks,
        "strongest": top,
    }
    return membership, attacks, evidence, checks, front_end


def dataset_budget(context: AuditContext, policy, notes: list[str]) -> tuple[dict | None, list[Check]]:
    """The data set's cumulative ε, re-read from the privacy budget ledger, and the lifetime limit's check."""
    from secure_ft.errors import PrivacyError
    from secure_ft.privacy.budget_composition import budget_delta, compose_ledger
    from secure_ft.privacy.budget_ledger import BudgetLedger, budget_dir_for

    if context.config.mode == "federated" and not context.members_available:  # a deployment: rows stayed at sites
        notes.append("the data set's lifetime budget of a deployed federation is kept by each site's own odometer "
                     "(deploy supernode --site-policy), not by the coordinator")
        return None, []
    fingerprint = context.splits.fingerprint
    folder = budget_dir_for(context.config)
    try:
        entries = BudgetLedger(folder).entries(fingerprint)
        statement = compose_ledger(fingerprint, entries, budget_delta(entries, policy.max_delta), running=False)
    except PrivacyError as error:
        return ({"fingerprint": fingerprint, "budget_dir": str(folder), "error": str(error)},
                threshold_checks(policy, {"dataset_epsilon": None}, group="budget", missing_note=str(error)))
    budget = {**statement.to_dict(), "budget_dir": str(folder), "limit": policy.max_dataset_epsilon}
    if not entries:
        notes.append(f"the privacy budget ledger {folder} holds no run on this data set ({fingerprint[:16]}…): "
                     "this run was trained elsewhere or its entry was removed")
    cumulative = statement.cumulative_epsilon if entries else None
    return budget, threshold_checks(
        policy, {"dataset_epsilon": None if cumulative is None or math.isinf(cumulative) else cumulative},
        group="budget", notes={"dataset_epsilon": f"{len(entries)} run(s) on data {fingerprint[:16]}…, composed "
                               f"by the {budget['accountant']} accountant at δ = {statement.delta}"},
        missing_note="unbounded: a run on this data set had no DP guarantee" if entries else
        "no recorded run on this data set")


@register(NAME)
def privacy_audit(context: AuditContext) -> AuditResult:
    """Check the DP guarantee and measure membership inference (and canaries); see the module docstring."""
    settings = context.config.audits.privacy
    policy = context.policy.privacy
    if policy.use_ci_bound and settings.n_boot == 0:
        raise AuditError("policy privacy.use_ci_bound needs confidence intervals; set audits.privacy.n_boot > 0")
    guarantee = read_guarantee(context.run_dir)
    checks, notes = guarantee_checks(guarantee, policy)
    if guarantee is not None:
        checks += recomputation_checks(context.run_dir, guarantee)

    if context.members_available:
        membership, attacks, evidence, membership_checks, front_end = _membership(context, guarantee, policy,
                                                                                  settings, notes)
        checks += membership_checks
    else:
        membership, attacks, evidence, front_end = None, {}, [], None
        checks += threshold_checks(policy, {}, group="membership", missing_note=MEMBERS_AT_SITES)
        notes.append(f"membership inference not measured: {MEMBERS_AT_SITES}")

    canary = None
    if settings.canaries:
        sigma, clip, noise_from = guarantee.canary_noise() if guarantee is not None else (None, None, "none")
        canary = canary_report(context, sigma, clip)
        canary["noise_from"] = noise_from
        evidence.append(_write_csv(context, "canaries.csv", pd.DataFrame(canary["canaries"])))
    checks += threshold_checks(policy, {"max_exposure": canary["max_exposure"] if canary else None}, group="canary",
                               missing_note="" if canary else "canary test is off; set audits.privacy.canaries > 0")

    budget, budget_checks = dataset_budget(context, policy, notes)
    checks += budget_checks

    accountant = guarantee_metrics(guarantee)
    metrics = {
        "dataset_budget": budget,  # None: not kept for this run (a deployed federation: the sites keep their own)
        "guarantee": accountant,
        "front_end": front_end,  # None without one; uses_private_vocabulary: outside the DP guarantee
        "membership": membership,  # None: not measurable here (a deployment's rows stayed at the sites)
        "epsilon_comparison": {
            "accountant_epsilon": accountant["epsilon"],
            "empirical_lower_bound": max((a["empirical_epsilon"]["lower_bound"] for a in attacks.values()),
                                         default=None),
            "empirical_point_estimate": max((a["empirical_epsilon"]["point_estimate"] or 0.0
                                             for a in attacks.values()), default=None),
        },
        "canary": canary,
    }
    return AuditResult.from_checks(NAME, metrics, checks, evidence=evidence, notes=notes)
