"""Export policy: which audits a model must pass, and each threshold.

A policy is a YAML file validated like the run config. The shipped default
(`secure_ft/policies/regulated-default.yaml`) is meant for regulated use: DP required,
bounded ε, bounded group gaps (judged on the pessimistic end of the confidence interval),
a minimum accuracy under attack for every recipe and a membership-inference AUC close to
chance.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secure_ft.errors import PolicyError

DEFAULT_POLICY_NAME = "regulated-default.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PerformancePolicy(_Section):
    min_accuracy: float | None = Field(None, ge=0, le=1, description="test-split accuracy")
    min_macro_f1: float | None = Field(None, ge=0, le=1, description="test-split macro-averaged F1")
    min_gain_over_majority: float | None = Field(
        None, description="accuracy minus the majority-class baseline must reach this"
    )
    min_class_recall: float | None = Field(
        None, ge=0, le=1, description="every class's recall must reach this (no class silently ignored)"
    )
    use_ci_bound: bool = Field(False, description="judge the lower CI bound instead of the point estimate")


Share = Annotated[float, Field(ge=0, le=1)]


class RobustnessPolicy(_Section):
    """Thresholds per attack recipe name; the key "default" applies to every recipe not named."""

    min_accuracy_under_attack: dict[str, Share] = Field(
        default_factory=dict, description="share of sampled test texts still classified right after the attack"
    )
    max_attack_success_rate: dict[str, Share] = Field(
        default_factory=dict, description="successful attacks over attempted ones (misclassified texts are skipped)"
    )
    max_budget_exhausted_fraction: dict[str, Share] = Field(
        default_factory=dict,
        description="attempted attacks stopped by the query budget; above it accuracy under attack is not trusted",
    )


class FairnessPolicy(_Section):
    max_demographic_parity_difference: float | None = Field(None, ge=0)
    min_demographic_parity_ratio: float | None = Field(None, ge=0, le=1)
    max_equalized_odds_difference: float | None = Field(None, ge=0)
    min_equalized_odds_ratio: float | None = Field(None, ge=0, le=1)
    max_equal_opportunity_difference: float | None = Field(None, ge=0)
    max_worst_group_accuracy_gap: float | None = Field(None, description="overall accuracy minus the worst group's")
    min_worst_group_accuracy: float | None = Field(None, ge=0, le=1)
    use_ci_bound: bool = Field(True, description="judge the pessimistic CI bound instead of the point estimate")
    insufficient_data: Literal["fail", "warn"] = Field(
        "warn", description="a group below min_group_size fails the audit, or is reported as a warning"
    )


class PrivacyPolicy(_Section):
    require_dp: bool = Field(True, description="a run without a differential-privacy guarantee fails")
    max_epsilon: float | None = Field(None, gt=0, description="applies to the central ε and to every site's ε")
    max_delta: float | None = Field(None, gt=0)
    max_membership_auc: float | None = Field(None, ge=0, le=1, description="strongest attack variant's AUC")
    max_tpr_at_1pct_fpr: float | None = Field(None, ge=0, le=1)
    max_tpr_at_0_1pct_fpr: float | None = Field(None, ge=0, le=1)
    max_membership_advantage: float | None = Field(
        None, ge=0, le=1, description="TPR - FPR at the attack's best threshold (2 x balanced accuracy - 1)"
    )
    max_canary_exposure: float | None = Field(None, ge=0, description="bits; needs audits.privacy.canaries > 0")
    use_ci_bound: bool = Field(False, description="judge the upper CI bound of the attack metrics")


class Policy(_Section):
    name: str = "unnamed policy"
    required_audits: list[str] = Field(default_factory=lambda: ["performance", "robustness", "fairness", "privacy"])
    performance: PerformancePolicy = Field(default_factory=PerformancePolicy)
    robustness: RobustnessPolicy = Field(default_factory=RobustnessPolicy)
    fairness: FairnessPolicy = Field(default_factory=FairnessPolicy)
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)


def default_policy_path() -> Path:
    return Path(str(resources.files("secure_ft") / "policies" / DEFAULT_POLICY_NAME))


def load_policy(path: str | Path | None = None) -> tuple[Policy, str]:
    """Load and validate a policy; returns it with the SHA-256 of the file's bytes."""
    path = Path(path) if path is not None else default_policy_path()
    if not path.is_file():
        raise PolicyError(f"{path}: policy file not found (the shipped default is {default_policy_path()})")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data.decode("utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise PolicyError(f"{path}: not a valid UTF-8 YAML file ({error})") from None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise PolicyError(f"{path}: invalid policy: {details}") from None
    return policy, hashlib.sha256(data).hexdigest()
