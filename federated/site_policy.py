"""A site's own policy: the limits a hospital enforces at its SuperNode, whatever the coordinator asks.

A site joining a federation is started with ``secure-ft deploy supernode --site-policy FILE``
(node config ``site-policy``). Before it trains any round it checks the run the coordinator
sent against that file, and refuses — naming the rule — when the run breaks one:

``max_epsilon_per_run``
    The ε this site's whole participation would spend (its σ, sampling rate and every round's
    steps, composed by the accountant at the site's δ) must stay within it. A run without DP
    has no finite ε and is refused.
``max_lifetime_epsilon``
    The site's data file keeps its own odometer (`secure_ft.privacy.budget_ledger`, in
    ``<state-dir>/privacy-budget``, keyed by the SHA-256 of the file): every run that
    released updates from it, composed with this run's planned spend, must stay within it.
``min_noise_multiplier``
    The run's σ at this site.
``max_rounds``
    ``federated.rounds``.
``accepted_base_models``
    SHA-256 digests (`secure_ft.records.model_identity.model_digest`) of base models this site
    trains; the site's local copy (which must also be the coordinator's) must be one.
``accepted_label_sets``
    Label sets the site agrees to train (order ignored); the run's must be one.

The coordinator cannot override any of it: the check runs in the site's process, on the
site's file, and the refusal reaches the coordinator as the rule and the site's limit only
(`federated.site_errors`); the figures stay in the site's log. What the site releases is on
its lifetime odometer before the update leaves (written ahead before each round, exact
after the release), so a run that later fails still counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from secure_ft.errors import ConfigError
from secure_ft.records.model_identity import file_sha256

POLICY_KEY = "site-policy"  # node config key: the site's policy file
BUDGET_FOLDER = "privacy-budget"


class SitePolicy(BaseModel):
    """The limits one site enforces (see the module docstring); unset fields are not checked."""

    model_config = ConfigDict(extra="forbid")

    max_epsilon_per_run: float | None = Field(None, gt=0)
    max_lifetime_epsilon: float | None = Field(None, gt=0)
    min_noise_multiplier: float | None = Field(None, gt=0)
    max_rounds: int | None = Field(None, ge=1)
    accepted_base_models: list[str] | None = None
    accepted_label_sets: list[list[str]] | None = None


def load_site_policy(path: str | Path) -> SitePolicy:
    """The site policy in `path`; a `ConfigError` naming the file and the field otherwise."""
    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the site policy ({error})") from None
    try:
        return SitePolicy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: site policy: {problems}. Fields: {', '.join(SitePolicy.model_fields)}") from None


class SitePolicyRefusal(ConfigError):
    """A run broke the site's policy; `public_rule` (rule and limit) may leave the site, the figures stay."""

    def __init__(self, message: str, rule: str):
        super().__init__(message)
        self.public_rule = rule


def data_file_sha256(path: str | Path) -> str:
    """The key of the site's lifetime odometer: the SHA-256 of its data file's bytes."""
    return file_sha256(path)


def site_round_steps(config, rows: int) -> tuple[float, int]:
    """(q, local steps of one round) at a site with `rows` training rows, as `federated.site_engine` trains."""
    batches = math.ceil(rows / min(config.training.batch_size, rows))
    per_round = config.federated.local_epochs * batches
    if config.federated.local_steps:
        per_round = min(per_round, config.federated.local_steps)
    return 1 / batches, per_round


def planned_site_history(config, rows: int, sigma: float | None) -> tuple[list[list[float]] | None, float | None]:
    """The (σ, q, steps) this site's whole participation takes, and its δ (None: not private).

    The arithmetic of `federated.site_engine`: q = 1 / batches per epoch, every round's local
    steps, and with a target ε the steps that stay within it.
    """
    from federated.site_engine import site_noise_multiplier
    from secure_ft.privacy.accountants import steps_within_budget
    from secure_ft.privacy.engine import resolve_delta

    if config.privacy.mode != "dp":
        return None, None
    delta, _ = resolve_delta(config.privacy, rows)
    rate, per_round = site_round_steps(config, rows)
    steps = config.federated.rounds * per_round
    sigma = float(sigma if sigma is not None else site_noise_multiplier(config, rows))
    if config.privacy.target_epsilon is not None:
        steps = steps_within_budget(config.privacy.accountant, (), sigma, rate, delta,
                                    config.privacy.target_epsilon, steps)
    return [[sigma, rate, steps]], delta


def check_site_policy(policy: SitePolicy, *, site: str, config, labels: list[str], base_model_sha256: str,
                      rows: int, sigma: float | None, lifetime_entries: list[dict[str, Any]],
                      current_entry: str | None) -> None:
    """Raise `SitePolicyRefusal` naming the first rule the run breaks (figures in the message)."""
    from secure_ft.privacy.budget_composition import composed_epsilon
    from secure_ft.privacy.budget_ledger import counted_history

    def refuse(rule: str, detail: str) -> None:
        raise SitePolicyRefusal(f"site {site}: the run breaks this site's policy {rule}: {detail}",
                                f"site policy {rule}")

    if policy.max_rounds is not None and config.federated.rounds > policy.max_rounds:
        refuse(f"max_rounds = {policy.max_rounds}", f"the run asks for {config.federated.rounds} rounds")
    if policy.accepted_label_sets is not None:
        if sorted(labels) not in [sorted(accepted) for accepted in policy.accepted_label_sets]:
            refuse("accepted_label_sets", f"the run's labels {sorted(labels)} are not an accepted set")
    if policy.accepted_base_models is not None and base_model_sha256 not in policy.accepted_base_models:
        refuse("accepted_base_models", f"the base model {config.model.name_or_path!r} has digest "
               f"{base_model_sha256 or 'unknown (not a local folder)'}, not an accepted one")
    history, delta = planned_site_history(config, rows, sigma)
    if policy.min_noise_multiplier is not None:
        noise = None if history is None else history[0][0]
        if noise is None or noise < policy.min_noise_multiplier:
            refuse(f"min_noise_multiplier = {policy.min_noise_multiplier:g}",
                   "the run trains without DP noise" if noise is None else f"the run's σ at this site is {noise:.4g}")
    if policy.max_epsilon_per_run is None and policy.max_lifetime_epsilon is None:
        return
    planned = math.inf if history is None else composed_epsilon([history], delta)
    if policy.max_epsilon_per_run is not None and planned > policy.max_epsilon_per_run:
        refuse(f"max_epsilon_per_run = {policy.max_epsilon_per_run:g}",
               f"the run would spend ε = {planned:.4f} here (δ = {delta}) over {config.federated.rounds} rounds"
               if history is not None else "the run trains without differential privacy (ε = ∞)")
    if policy.max_lifetime_epsilon is not None:
        others = [entry for entry in lifetime_entries if entry["entry"] != current_entry]
        recorded = [None if entry["mechanism"] == "none" else counted_history(entry) for entry in others]
        deltas = [float(entry["delta"]) for entry in others if entry.get("delta") is not None]
        at = min(deltas + ([delta] if delta is not None else [])) if (deltas or delta) else None
        spent = composed_epsilon(recorded, at) if others and at is not None else (math.inf if others else 0.0)
        after = math.inf if history is None or at is None else composed_epsilon([*recorded, history], at)
        if after > policy.max_lifetime_epsilon:
            refuse(f"max_lifetime_epsilon = {policy.max_lifetime_epsilon:g}",
                   f"this site's data has spent ε = {spent:.4f} in {len(others)} earlier run(s); this run plans "
                   f"ε = {planned:.4f}, which would bring it to {after:.4f} (PRV accountant, δ = {at})")
