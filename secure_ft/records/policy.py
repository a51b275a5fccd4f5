"""Export policy: which audits a model must pass, and each threshold.

A policy is a YAML file validated like the run config. The shipped default
(`secure_ft/records/policies/regulated-default.yaml`) is meant for regulated use: DP required,
bounded ε, bounded group gaps (judged on the pessimistic end of the confidence interval),
a minimum accuracy under attack for every recipe and a membership-inference AUC close to
chance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from secure_ft.errors import PolicyError

DEFAULT_POLICY_NAME = "regulated-default.yaml"


@dataclass(frozen=True)
class Threshold:
    """What a policy field checks: one measured metric of its audit, compared with the field's value.

    Declared beside each field, so a field's name never decides what it checks.

    Attributes
    ----------
    metric
        The key the audit measures (e.g. ``accuracy``, ``demographic_parity_difference``).
    comparison
        ``>=`` for a minimum, ``<=`` for a maximum.
    pessimistic_bound
        The end of the metric's confidence interval that is judged when the section's
        ``use_ci_bound`` is on (``ci_lower`` for a minimum, ``ci_upper`` for a maximum).
    group
        Which measurements of the audit the metric belongs to (an audit with several kinds of
        measurement, such as privacy's guarantee and membership attack, evaluates each group
        on its own numbers).
    check
        The check's name in the audit result (default: the metric).
    """

    metric: str
    comparison: Literal["<=", ">="]
    pessimistic_bound: Literal["ci_lower", "ci_upper"] | None = None
    group: str = "main"
    check: str | None = None

    @property
    def check_name(self) -> str:
        return self.check or self.metric


@dataclass(frozen=True)
class Requirement:
    """A policy field that, when true, makes its audit check a property (e.g. a DP guarantee)."""

    check: str


@dataclass(frozen=True)
class Setting:
    """A policy field that says *how* to judge (which bound, how to treat small groups), not what."""


class Wording:
    """A policy field of words printed in the report (a recipe's threat model); it judges nothing."""


def _minimum(metric: str, *, group: str = "main", check: str | None = None) -> Threshold:
    return Threshold(metric, ">=", "ci_lower", group, check)


def _maximum(metric: str, *, group: str = "main", check: str | None = None) -> Threshold:
    return Threshold(metric, "<=", "ci_upper", group, check)


def declared_thresholds(section: type[BaseModel]) -> dict[str, Threshold]:
    """Field name → its `Threshold`, for every threshold field of a policy section class."""
    return {name: meta for name, field in section.model_fields.items() for meta in field.metadata
            if isinstance(meta, Threshold)}


def declared_requirements(section: type[BaseModel]) -> dict[str, Requirement]:
    return {name: meta for name, field in section.model_fields.items() for meta in field.metadata
            if isinstance(meta, Requirement)}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def sets_any_check(self) -> bool:
        """Whether this section asks its audit to check anything (a threshold set or a requirement on)."""
        for name in declared_thresholds(type(self)):
            if getattr(self, name) not in (None, {}, []):
                return True
        return any(getattr(self, name) is True for name in declared_requirements(type(self)))


Share = Annotated[float, Field(ge=0, le=1)]
UnitShare = Annotated[float | None, Field(ge=0, le=1)]
Judge = Annotated[bool, Setting()]


class PerformancePolicy(_Section):
    min_accuracy: Annotated[UnitShare, _minimum("accuracy")] = Field(None, description="test-split accuracy")
    min_macro_f1: Annotated[UnitShare, _minimum("macro_f1")] = Field(
        None, description="test-split macro-averaged F1")
    min_gain_over_majority: Annotated[float | None, _minimum("gain_over_majority")] = Field(
        None, description="accuracy minus the majority-class baseline must reach this"
    )
    min_class_recall: Annotated[UnitShare, _minimum("min_class_recall")] = Field(
        None, description="every class's recall must reach this (no class silently ignored)"
    )
    use_ci_bound: Judge = Field(False, description="judge the lower CI bound instead of the point estimate")


PerRecipe = dict[str, Share]
PerRecipeCount = dict[str, Annotated[int, Field(ge=0)]]


class ValidityConstraints(_Section):
    """What counts as a label-preserving perturbation (the ``-lp`` recipes, `audits._label_preserving`).

    Defaults are the published human-aligned values: Morris et al. 2020 ("Reevaluating
    Adversarial Examples in Natural Language") and TextAttack's A2T recipe (Yoo & Qi 2021).
    """

    max_modification_rate: float = Field(
        0.10, gt=0, le=1, description="share of a text's words a perturbation may change (A2T: 10%)")
    min_words_allowed: int = Field(
        2, ge=1, description="words that may change however short the text (the rate's floor, as in A2T)")
    part_of_speech: bool = Field(
        True, description="a swapped word keeps its fine-grained Penn Treebank tag in its sentence, so no "
        "inflection change (fix/fixing, day/days) (Morris et al. 2020)")
    parse_stability: bool = Field(
        True, description="no new grammatical error (Morris et al. 2020, who used LanguageTool; offline proxy): "
        "re-parsed with the swap, the swapped word keeps its dependency relation, head and dependents")
    min_sentence_similarity: float = Field(
        0.98, ge=-1, le=1, description="cosine similarity of the window around the swaps under the independent "
        "sentence encoder, word swaps only (Morris et al. 2020's human-aligned value)")
    sentence_window: int = Field(15, ge=1, description="words in that window (TextFooler / A2T)")
    max_text_edit_distance: int = Field(
        30, ge=1, description="character edits: Levenshtein distance of the whole text (DeepWordBug's epsilon)")
    protect_redaction_placeholders: bool = Field(
        True, description="no perturbation touches a redaction mask (XX, XXXX): the data provider writes them, "
        "not the text's author")
    predominant_sense: bool = Field(
        True, description="word swaps: the new word is a lemma of the original's first-listed WordNet synset in "
        "its tagged part of speech, and that synset is the new word's own first-listed one (predominant / first "
        "sense heuristic, McCarthy et al. 2004); off: any shared synset in the tagged part of speech")
    numbers_kept: bool = Field(
        True, description="no word holding a digit is modified: a number's value is its meaning, and a number "
        "has no synonym and no misspelling")
    typos_are_non_words: bool = Field(
        True, description="character edits: an edited word must not be an English word (the spelling front "
        "end's public lexicon); a real-word substitution (form -> from) is no typo")


class RecipeThreatModel(_Section):
    """A recipe's threat model in words: what the attacker may do and what stays true of the text."""

    family: str = Field(min_length=1, description="perturbation family (character edits, synonym swaps, ...)")
    attacker: str = Field(min_length=1, description="who perturbs what, with which knowledge and budget")
    validity: str = Field(min_length=1, description="what every perturbation keeps (meaning, label, constraints)")


class RobustnessPolicy(_Section):
    """Thresholds per attack recipe name; the key "default" applies to every recipe not named.

    Only the gated recipes are judged: ``gated_recipes`` when set (the audit runs them whatever
    the run config lists), else the run config's ``audits.robustness.recipes``. Every other
    recipe the audit ran (the config's ``stress_recipes``) is reported beside them and never
    judged.
    """

    gated_recipes: Annotated[list[str] | None, Setting()] = Field(
        None, description="recipes this policy judges; null = the run config's audits.robustness.recipes")
    threat_models: Annotated[dict[str, RecipeThreatModel], Wording()] = Field(
        default_factory=dict, description="per recipe name: its threat model in words (printed in the report)")
    validity: Annotated[ValidityConstraints, Setting()] = Field(default_factory=ValidityConstraints)
    min_relative_accuracy_under_attack: Annotated[PerRecipe, _minimum("relative_accuracy_under_attack")] = Field(
        default_factory=dict, description="accuracy under attack over the clean accuracy of the same sample "
        "(with use_ci_bound: the lower Wilson bound of accuracy under attack, over clean accuracy)")
    min_attacked_examples: Annotated[PerRecipeCount, _minimum("attacked")] = Field(
        default_factory=dict, description="correctly classified texts the recipe must have attacked")

    min_accuracy_under_attack: Annotated[PerRecipe, _minimum("accuracy_under_attack")] = Field(
        default_factory=dict, description="share of sampled test texts still classified right after the attack"
    )
    max_attack_success_rate: Annotated[PerRecipe, _maximum("attack_success_rate")] = Field(
        default_factory=dict, description="successful attacks over attempted ones (misclassified texts are skipped)"
    )
    max_budget_exhausted_fraction: Annotated[PerRecipe, _maximum("budget_exhausted_fraction")] = Field(
        default_factory=dict,
        description="attempted attacks stopped by the query budget; above it accuracy under attack is not trusted",
    )
    use_ci_bound: Judge = Field(
        False, description="judge the pessimistic end of each rate's Wilson 95% interval (lower for minimums, "
        "upper for maximums) instead of the point estimate")


class FairnessPolicy(_Section):
    """Limits on group disparities, each judged on its bootstrap interval and a permutation test.

    A disparity **passes** when the pessimistic end of its interval meets the limit, **fails**
    when the optimistic end breaks it too and shuffling the group labels produces a disparity
    that large with probability below ``significance_level`` (a randomization test: Fisher
    1935; Good, *Permutation Tests*, 2005), and is **inconclusive** otherwise; ``inconclusive``
    says what the gate does with that. A (class, group) cell with fewer than ``min_positives``
    positives (or negatives) has a TPR (FPR) too noisy to compare and is left out of equal
    opportunity and equalized odds, and listed.
    """

    max_demographic_parity_difference: Annotated[float | None, _maximum("demographic_parity_difference")] = Field(
        None, ge=0)
    min_demographic_parity_ratio: Annotated[UnitShare, _minimum("demographic_parity_ratio")] = None
    max_equalized_odds_difference: Annotated[float | None, _maximum("equalized_odds_difference")] = Field(None, ge=0)
    min_equalized_odds_ratio: Annotated[UnitShare, _minimum("equalized_odds_ratio")] = None
    max_equal_opportunity_difference: Annotated[float | None, _maximum("equal_opportunity_difference")] = Field(
        None, ge=0)
    max_worst_group_accuracy_gap: Annotated[float | None, _maximum("worst_group_accuracy_gap")] = Field(
        None, description="overall accuracy minus the worst group's")
    min_worst_group_accuracy: Annotated[UnitShare, _minimum("worst_group_accuracy")] = None
    min_positives: Annotated[int, Setting()] = Field(
        10, ge=1, description="a (class, group) cell with fewer positives (negatives) is left out of the TPR (FPR) "
        "comparisons of equal opportunity and equalized odds, and listed")
    significance_level: Annotated[float, Setting()] = Field(
        0.05, gt=0, lt=1, description="a broken limit fails only when the permutation test's p-value is below this")
    inconclusive: Annotated[Literal["block", "review", "warn"], Setting()] = Field(
        "block", description="what an inconclusive disparity does to the verdict: block export, ask for a human "
        "review (verdict needs_review), or only warn")
    insufficient_data: Annotated[Literal["fail", "warn"], Setting()] = Field(
        "warn", description="a group below min_group_size fails the audit, or is reported as a warning"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_point_estimate_switch(cls, raw):
        if isinstance(raw, dict) and "use_ci_bound" in raw:
            raise ValueError("use_ci_bound is no longer a fairness setting: every disparity is judged on its bootstrap "
                             "interval and a permutation test; remove the line (set `inconclusive: block | review | "
                             "warn` to say what a disparity the data cannot settle does)")
        return raw


class PrivacyPolicy(_Section):
    require_dp: Annotated[bool, Requirement("dp_guarantee")] = Field(
        True, description="a run without a differential-privacy guarantee fails")
    max_epsilon: Annotated[float | None, _maximum("epsilon", group="guarantee")] = Field(
        None, gt=0, description="applies to the central ε and to every site's ε")
    max_delta: Annotated[float | None, _maximum("delta", group="guarantee")] = Field(None, gt=0)
    max_dataset_epsilon: Annotated[float | None, _maximum("dataset_epsilon", group="budget")] = Field(
        None, gt=0, description="lifetime ε of the training data set: every run recorded in the privacy budget "
        "ledger for its data fingerprint, composed by the accountant (pre-flight refuses a run that would exceed it)")
    max_membership_auc: Annotated[UnitShare, _maximum("auc", group="membership", check="membership_auc")] = Field(
        None, description="strongest attack variant's AUC")
    max_tpr_at_1pct_fpr: Annotated[UnitShare, _maximum("tpr_at_1pct_fpr", group="membership")] = None
    max_tpr_at_0_1pct_fpr: Annotated[UnitShare, _maximum("tpr_at_0_1pct_fpr", group="membership")] = None
    max_membership_advantage: Annotated[UnitShare, _maximum("advantage", group="membership",
                                                            check="membership_advantage")] = Field(
        None, description="TPR - FPR at the attack's best threshold (2 x balanced accuracy - 1)"
    )
    max_canary_exposure: Annotated[float | None, _maximum("max_exposure", group="canary",
                                                          check="canary_max_exposure")] = Field(
        None, ge=0, description="bits; needs audits.privacy.canaries > 0")
    use_ci_bound: Judge = Field(False, description="judge the upper CI bound of the attack metrics")


#: the statements of the run config's ``card:`` section a policy may require (`secure_ft.records.config.CardConfig`)
CARD_FIELDS = ("intended_purpose", "out_of_scope_uses", "known_limitations", "deidentification", "data_provenance")


class DocumentationPolicy(_Section):
    """What the technical documentation of a run must state (EU AI Act Annex IV; SR 11-7)."""

    required_card_fields: list[str] = Field(
        default_factory=list, description="statements of the run config's card: section a run must give; "
        "pre-flight refuses a run without them (exit 2)")

    @field_validator("required_card_fields")
    @classmethod
    def _known_fields(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in CARD_FIELDS]
        if unknown:
            raise ValueError(f"unknown card field {unknown[0]!r}; known fields are {', '.join(CARD_FIELDS)}")
        return names


#: the audits a policy can require: one section each below (``audits.registry`` runs the same four);
#: names become file names (``audits/NAME.json``), so nothing else is accepted
KNOWN_AUDITS = ("performance", "robustness", "fairness", "privacy")


class Policy(_Section):
    name: str = "unnamed policy"
    required_audits: list[str] = Field(default_factory=lambda: list(KNOWN_AUDITS))
    performance: PerformancePolicy = Field(default_factory=PerformancePolicy)
    robustness: RobustnessPolicy = Field(default_factory=RobustnessPolicy)
    fairness: FairnessPolicy = Field(default_factory=FairnessPolicy)
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)
    documentation: DocumentationPolicy = Field(default_factory=DocumentationPolicy)
    # judgement keys the file omitted, as warnings (`omitted_key_warnings`); set by `load_policy`
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @field_validator("required_audits")
    @classmethod
    def _known_audits(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in KNOWN_AUDITS]
        if unknown:
            raise ValueError(f"unknown audit {unknown[0]!r}; known audits are {', '.join(KNOWN_AUDITS)}")
        return names


# a key whose default, when the file omits it, changes how checks are judged rather than which ones apply:
# every `Setting` (which bound is judged, how small groups count) and the budget guard of robustness, without
# which accuracy under attack is trusted however many searches the query budget cut short
SAFEGUARD_KEYS = (("robustness", "max_budget_exhausted_fraction"),)


def judgement_keys() -> list[tuple[str, str]]:
    """(section, field) of every key whose default changes judgement when a policy file omits it."""
    keys = [(section, name) for section, field in Policy.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
            for name, meta in ((n, m) for n, f in field.annotation.model_fields.items() for m in f.metadata)
            if isinstance(meta, Setting)]
    return keys + [key for key in SAFEGUARD_KEYS if key not in keys]


def omitted_key_warnings(raw: dict, policy: Policy) -> list[str]:
    """One warning per judgement key (`judgement_keys`) a policy file omits, naming the default applied.

    Only sections whose audit the policy requires and that set a check are considered: a key of
    an audit that never runs changes nothing.
    """
    warnings = []
    for section_name, field in judgement_keys():
        section = getattr(policy, section_name)
        given = raw.get(section_name) if isinstance(raw.get(section_name), dict) else {}
        if section_name not in policy.required_audits or not section.sets_any_check() or field in given:
            continue
        default = getattr(section, field)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        shown = "{} (no check)" if default == {} else yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
        shown = shown.removesuffix("...").strip()
        meaning = type(section).model_fields[field].description or ""
        warnings.append(f"policy {policy.name!r} does not set {section_name}.{field}: the default {shown} applies"
                        + (f" ({meaning})" if meaning else "") + f"; set {section_name}.{field} explicitly "
                        "(`secure-ft policy diff` compares with the shipped default)")
    return warnings

def default_policy_path() -> Path:
    return Path(str(resources.files("secure_ft.records") / "policies" / DEFAULT_POLICY_NAME))


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
    policy._warnings = omitted_key_warnings(raw if isinstance(raw, dict) else {}, policy)
    return policy, hashlib.sha256(data).hexdigest()


# --- names that cannot lie ---------------------------------------------------------------------

def shipped_policy_digests() -> dict[str, str]:
    """Name → SHA-256 of each policy file shipped with this secure-ft (``secure_ft/records/policies/*.yaml``)."""
    folder = default_policy_path().parent
    digests = {}
    for path in sorted(folder.glob("*.yaml")):
        data = path.read_bytes()
        name = (yaml.safe_load(data.decode("utf-8")) or {}).get("name") or path.stem
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def describe_policy(name: str, sha256: str) -> str:
    """How a verdict's policy is shown everywhere: its name *and* its digest, and whether it is what the name claims.

    A policy that calls itself by a shipped policy's name with other content is shown as a
    modified copy of that policy: a name alone proves nothing, the digest does.
    """
    shipped = shipped_policy_digests().get(name)
    short = f"sha256 {sha256[:16]}…" if sha256 else "no digest"
    if shipped is None:
        return f"{name!r} ({short})"
    if shipped == sha256:
        return f"{name!r} ({short}, as shipped)"
    return (f"{name!r} ({short}): a MODIFIED COPY of the shipped {name!r} (this secure-ft ships sha256 "
            f"{shipped[:16]}…), or that policy as another secure-ft version shipped it; its name is not its content")
