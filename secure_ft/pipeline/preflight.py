"""Pre-flight: can this run pass its policy at all? Checked before anything trains.

A policy is judged after training, by the audits and the gate. Some of its demands can be
seen to fail from the run config alone, and finding that out after an hour of training (or
worse, after a federated run across sites) wastes the hour. Pre-flight checks, in seconds
and without loading a model or writing anything:

* every audit the policy requires exists and can run: fairness needs at least one group
  column, present in the data file; a policy that requires DP gets a DP run (sample-level
  ``privacy.mode: dp``, or for a federated run per-site or central client-level DP);
* every δ the run will use is within ``privacy.max_delta``: the central run's δ
  (``privacy.target_delta`` or 1/(10 N) for the N training rows), each simulated site's δ
  (the same rule with the site's own N, from `federated.partition.partition_sites`) and the
  central client-level ``federated.central_delta``; no δ reaches 1/N;
* a deployed federation's hold-out can be judged: when the policy requires the fairness
  audit, the coordinator's test split (the share ``data.split.test_fraction`` of its
  held-out file) must have, in at least one sensitive column, two groups with at least
  ``audits.fairness.min_group_size`` rows — otherwise the audit could only fail, after every
  site has spent its privacy budget;
* the data set's lifetime budget ``privacy.max_dataset_epsilon``: the run's planned mechanism
  (σ, q, steps, as training will compute them: a central run's, or every simulated site's,
  composed sequentially), plus the privacy audit's canary run when it will run one, composed
  with every run the privacy budget ledger records for the data's fingerprint
  (`secure_ft.privacy.budget_composition`) must stay within it (a deployed federation's
  sites keep their own odometers);
* every ε the run aims for is within ``privacy.max_epsilon``: the central or per-site
  ``privacy.target_epsilon`` (which must be set: a fixed noise multiplier alone has no
  budget), and the central client-level ε that ``federated.rounds`` releases at
  ``federated.central_noise_multiplier`` add up to;
* the technical documentation: every statement the policy's
  ``documentation.required_card_fields`` lists is given in the config's ``card:`` section (or
  shipped with a built-in data set, `secure_ft.records.technical_documentation`); the problem names the
  missing keys and shows the YAML to add.

Group columns that collide with the text, label or internal columns are refused earlier, when
the config is validated (`secure_ft.records.config.DataConfig`), so that ``secure-ft train`` is
protected as well.

Every problem found is listed in one :class:`~secure_ft.errors.ConfigError` (exit 2), each
naming the setting, the policy file and field it conflicts with, and the fix.
"""

from __future__ import annotations

import math

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from secure_ft.errors import ConfigError, DataError
from secure_ft.records.config import RunConfig
from secure_ft.records.policy import Policy, default_policy_path


@dataclass
class PreflightReport:
    """What pre-flight checked and the privacy parameters the run will use.

    Attributes
    ----------
    policy_name, policy_path
        The policy the run was checked against.
    train_rows
        Training rows of the split (None when the data was not loaded).
    site_train_rows
        Simulated site name → its training rows (federated runs).
    deltas, epsilons
        Scope (``run``, ``site:<name>``, ``central``) → the δ / target ε the run will use.
    warnings
        What could not be checked before training, and why.
    dataset_budget
        With ``privacy.max_dataset_epsilon``: the data set's ε spent so far, the run's planned ε,
        the cumulative ε after it and the limit (`planned_dataset_spend`).
    seconds
        How long the checks took.
    """

    policy_name: str
    policy_path: str
    train_rows: int | None = None
    site_train_rows: dict[str, int] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    epsilons: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dataset_budget: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_before_training(config: RunConfig, policy: Policy, policy_path: str | Path | None, *,
                          deployed: bool = False) -> PreflightReport:
    """Check that `config` can satisfy `policy` before anything trains.

    Parameters
    ----------
    config
        The run configuration.
    policy
        The loaded export policy.
    policy_path
        The policy's file, named in messages; None = the shipped default.
    deployed
        A federation across real sites (`secure-ft deploy launch`): the coordinator's data is
        only its hold-out and the sites' sizes are unknown until they answer, so each site's δ
        (1/(10 N) of its own N unless ``privacy.target_delta`` is set) is left to the gate.

    Returns
    -------
    PreflightReport
        The δ and ε per scope, the split sizes and what could not be checked.

    Raises
    ------
    ConfigError
        Listing every problem found, each with its setting, policy field and fix.
    """
    started = time.monotonic()
    policy_file = str(policy_path) if policy_path is not None else str(default_policy_path())
    report = PreflightReport(policy_name=policy.name, policy_path=policy_file)
    check = _Checker(config, policy, policy_file, report, deployed)
    check.documentation()
    check.audit_names()
    check.fairness_columns()
    check.fairness_judgement()
    if deployed:
        check.holdout_fairness_groups()
    check.dp_required()
    check.epsilons()
    check.deltas()
    check.dataset_budget()
    report.seconds = round(time.monotonic() - started, 3)
    if check.problems:
        source = config.source_path or "the built-in default config"
        listed = "\n".join(f"  - {problem}" for problem in check.problems)
        raise ConfigError(f"pre-flight: {source} cannot pass policy {policy.name!r} ({policy_file}); nothing was "
                          f"trained. {len(check.problems)} problem(s):\n{listed}")
    return report


class _Checker:
    """The individual checks; each appends readable problems instead of raising, so all are listed."""

    def __init__(self, config: RunConfig, policy: Policy, policy_file: str, report: PreflightReport,
                 deployed: bool = False):
        self.config, self.policy, self.report, self.deployed = config, policy, report, deployed
        self.where = f"policy {Path(policy_file).name}"
        self.problems: list[str] = []
        self.required = list(dict.fromkeys(policy.required_audits))
        self._header: list[str] | None = None
        self._header_read = False

    # -- technical documentation -------------------------------------------------------------

    def documentation(self) -> None:
        from secure_ft.records.technical_documentation import card_snippet, missing_card_fields

        missing = missing_card_fields(self.config, self.policy.documentation.required_card_fields)
        if not missing:
            return
        snippet = "\n".join(f"      {line}" for line in card_snippet(missing).splitlines())
        self.problems.append(
            f"card: {', '.join(f'card.{name}' for name in missing)} missing, but {self.where} "
            "documentation.required_card_fields requires them (the technical documentation of the report and the "
            "model card). Add them to the run config, written by the people responsible for the model, e.g.\n"
            f"{snippet}")

    # -- audits ------------------------------------------------------------------------------

    def audit_names(self) -> None:
        from audits.registry import available_audits  # the names the gate will look up

        known = available_audits()
        for name in self.required:
            if name not in known:
                self.problems.append(
                    f"{self.where} required_audits: unknown audit {name!r}; known audits are {', '.join(known)}. "
                    "Fix the spelling or remove it")

    def fairness_columns(self) -> None:
        if "fairness" not in self.required:
            return
        data, configured = self.config.data, self.config.audits.fairness.sensitive_columns
        columns = list(configured) if configured is not None else list(data.group_columns)
        setting = "audits.fairness.sensitive_columns" if configured is not None else "data.group_columns"
        if not columns:
            self.problems.append(
                f"{setting} is empty, but {self.where} required_audits lists fairness, which compares groups. "
                "List the columns holding group membership in data.group_columns (e.g. [sex, age_group]), "
                "or use a policy that does not require the fairness audit")
            return
        if configured is not None:
            unloaded = [column for column in configured if column not in data.group_columns]
            if unloaded:
                self.problems.append(
                    f"audits.fairness.sensitive_columns: {unloaded} are not in data.group_columns "
                    f"({data.group_columns}), so the data loader drops them and the fairness audit required by "
                    f"{self.where} cannot run. Add them to data.group_columns")
        header = self.header()
        if header is None:
            return
        absent = [column for column in dict.fromkeys([*data.group_columns, *columns]) if column not in header]
        if absent:
            self.problems.append(
                f"{setting}: column(s) {absent} are not in the data file {data.source} (its columns: "
                f"{', '.join(header)}); the fairness audit required by {self.where} needs them. Fix the names in "
                "data.group_columns or add the columns to the file")

    def fairness_judgement(self) -> None:
        """Thresholds are judged on bootstrap intervals and a permutation test: both must be able to run."""
        if "fairness" not in self.required or not self.policy.fairness.sets_any_check():
            return
        settings, level = self.config.audits.fairness, self.policy.fairness.significance_level
        if settings.n_boot == 0:
            self.problems.append(
                f"audits.fairness.n_boot is 0, but {self.where} sets fairness thresholds, which are judged on "
                "bootstrap intervals. Set audits.fairness.n_boot > 0 (default 200)")
        if 1.0 / (1 + settings.n_permutations) >= level:
            self.problems.append(
                f"audits.fairness.n_permutations = {settings.n_permutations} cannot give a p-value below "
                f"{self.where} fairness.significance_level = {level:g}, so no disparity could ever fail. Use at least "
                f"{int(math.ceil(1 / level))} (default 1000)")
    def holdout_fairness_groups(self) -> None:
        """Deployed: can the hold-out's test split compare two groups in some sensitive column?"""
        if "fairness" not in self.required or self.problems or self._hub_source():
            return
        data, settings = self.config.data, self.config.audits.fairness
        columns = list(settings.sensitive_columns if settings.sensitive_columns is not None else data.group_columns)
        splits = self.splits()
        if splits is None or not columns:
            return
        smallest = settings.min_group_size
        found = {}
        for column in columns:
            counts = splits.test[column].astype(str).value_counts()
            if int((counts >= smallest).sum()) >= 2:
                return
            found[column] = ", ".join(f"{value!r} {count}" for value, count in counts.head(4).items())
        total = sum(len(part) for part in (splits.train, splits.validation, splits.test))
        listed = "; ".join(f"{column}: {groups}" for column, groups in found.items())
        self.problems.append(
            f"the coordinator's hold-out {data.source} has {total} rows, and its test split (data.split.test_fraction "
            f"= {data.split.test_fraction:g}) has {len(splits.test)}: no sensitive column has two groups with at "
            f"least audits.fairness.min_group_size = {smallest} test rows ({listed}), so the fairness audit required "
            f"by {self.where} cannot pass. Add held-out rows from the smaller groups, or raise "
            "data.split.test_fraction (in a deployment the hold-out's training share only sizes the probe recipe), "
            "before any site trains")

    # -- privacy: is there a guarantee at all, and what ε does it aim for ----------------------

    def _site_dp(self) -> bool:
        return self.config.mode == "federated" and self.config.privacy.mode == "dp"

    def _central_dp(self) -> bool:
        return self.config.mode == "federated" and self.config.federated.central_dp != "none"

    def _privacy_judged(self) -> bool:
        return "privacy" in self.required

    def dp_required(self) -> None:
        if not (self._privacy_judged() and self.policy.privacy.require_dp):
            return
        if self.config.privacy.mode == "dp" or self._central_dp():
            return
        fix = ("Set privacy.mode: dp (per-site DP-SGD) or federated.central_dp: fixed (client-level DP)"
               if self.config.mode == "federated" else "Set privacy.mode: dp with privacy.target_epsilon")
        self.problems.append(
            f"privacy.mode: none, but {self.where} privacy.require_dp is true: the privacy audit would fail a model "
            f"trained without differential privacy. {fix}, or use a policy with require_dp: false")

    def epsilons(self) -> None:
        settings, limit = self.config.privacy, self.policy.privacy.max_epsilon
        if settings.mode == "dp":
            scope = "sites" if self.config.mode == "federated" else "run"
            if settings.target_epsilon is not None:
                self.report.epsilons[scope] = settings.target_epsilon
            if self._privacy_judged() and limit is not None:
                whose = "each site's ε" if scope == "sites" else "the run's ε"
                if settings.target_epsilon is None:
                    self.problems.append(
                        f"privacy.target_epsilon is null with a fixed privacy.noise_multiplier, so {whose} has no "
                        f"budget and may exceed {self.where} privacy.max_epsilon = {limit:g}. Set "
                        f"privacy.target_epsilon: {limit:g} (or less); with the noise fixed it is a hard cap")
                elif settings.target_epsilon > limit:
                    self.problems.append(
                        f"privacy.target_epsilon = {settings.target_epsilon:g} ({whose}) is above {self.where} "
                        f"privacy.max_epsilon = {limit:g}. Set privacy.target_epsilon to {limit:g} or less")
        if self._central_dp():
            epsilon = central_client_epsilon(self.config)
            self.report.epsilons["central"] = epsilon
            if self._privacy_judged() and limit is not None and epsilon > limit:
                federated = self.config.federated
                self.problems.append(
                    f"federated.central_dp: {federated.rounds} rounds at federated.central_noise_multiplier = "
                    f"{federated.central_noise_multiplier:g} (δ = {federated.central_delta:g}) give a central "
                    f"client-level ε of {epsilon:.2f}, above {self.where} privacy.max_epsilon = {limit:g}. Raise "
                    "federated.central_noise_multiplier or lower federated.rounds")

    # -- privacy: the data set's lifetime budget -------------------------------------------------

    def dataset_budget(self) -> None:
        limit = self.policy.privacy.max_dataset_epsilon
        if limit is None or not self._privacy_judged():
            return
        if self.deployed:
            self.report.warnings.append("privacy.max_dataset_epsilon: a deployed federation's spend is kept by each "
                                        "site's own odometer (deploy supernode --site-policy), not checked here")
            return
        if self._hub_source():
            self.header()
            return
        splits = self.splits()
        if splits is None:
            return
        from secure_ft.errors import PrivacyError

        try:
            spend = planned_dataset_spend(self.config, splits, self.policy)
        except (PrivacyError, ConfigError) as error:
            self.problems.append(f"privacy budget ledger: {error}")
            return
        self.report.dataset_budget = spend
        if spend["after_epsilon"] is None or spend["after_epsilon"] > limit:
            show = lambda value: "∞ (no finite bound)" if value is None else f"{value:.4f}"  # noqa: E731
            self.problems.append(
                f"the data set {spend['fingerprint'][:16]}… has spent ε = {show(spend['spent_epsilon'])} in "
                f"{spend['runs']} recorded run(s) ({spend['budget_dir']}); this run plans ε = "
                f"{show(spend['planned_epsilon'])} ({spend['planned_mechanism']}), which brings it to "
                f"{show(spend['after_epsilon'])} (composed by the {spend['accountant']} accountant"
                + (f" at δ = {spend['delta']:.3g}" if spend['delta'] is not None else "") + f"), above {self.where} privacy.max_dataset_epsilon = {limit:g}. Nothing was "
                "trained. Use fresh data, spend less (a lower privacy.target_epsilon or fewer epochs), or raise the "
                "lifetime limit if the data's owner agrees (`secure-ft privacy budget --fingerprint "
                f"{spend['fingerprint']}` lists the runs)")

    # -- privacy: every δ -----------------------------------------------------------------------

    def deltas(self) -> None:
        settings = self.config.privacy
        limit = self.policy.privacy.max_delta if self._privacy_judged() else None
        if self._central_dp():
            delta = self.config.federated.central_delta
            self.report.deltas["central"] = delta
            if limit is not None and delta > limit:
                self.problems.append(
                    f"federated.central_delta = {delta:g} is above {self.where} privacy.max_delta = {limit:g}. "
                    f"Set federated.central_delta to {limit:g} or less")
        if settings.mode != "dp":
            return
        if settings.target_delta is not None and limit is not None and settings.target_delta > limit:
            self.problems.append(
                f"privacy.target_delta = {settings.target_delta:g} is above {self.where} privacy.max_delta = "
                f"{limit:g}. Set privacy.target_delta to {limit:g} or less")
            return
        sizes = self.training_sizes()
        if sizes is None:
            return
        self._deltas_for(sizes, limit)

    def _deltas_for(self, sizes: dict[str, int], limit: float | None) -> None:
        """δ of every scope; one problem per kind, naming every scope it concerns."""
        from secure_ft.privacy.engine import default_delta  # the rule training applies

        target = self.config.privacy.target_delta
        sites = self.config.mode == "federated"
        who = "simulated site" if sites else "the training split"
        not_below_n, over_limit = [], []
        for scope, rows in sizes.items():
            name = f"{scope.removeprefix('site:')}: " if sites else ""
            delta = target if target is not None else default_delta(rows)
            self.report.deltas[scope] = delta
            if target is not None and target >= 1 / rows:
                not_below_n.append(f"{name}N = {rows}, 1/N = {1 / rows:.2g}")
            elif target is None and limit is not None and delta > limit:
                over_limit.append(f"{name}N = {rows}, δ = {delta:.2g}")
        if not_below_n:
            smallest = min(sizes.values())
            self.problems.append(
                f"privacy.target_delta = {target:g} is not below 1/N for the training rows of {who} "
                f"({'; '.join(not_below_n)}): such a δ allows leaking whole rows. Set privacy.target_delta below "
                f"{1 / smallest:.2g} (e.g. {default_delta(smallest):.2g})")
        if over_limit:
            why = " (a site's default δ is taken from its own N rows)" if sites else ""
            self.problems.append(
                f"privacy.target_delta: null gives {'each ' if sites else ''}{who} δ = min(1/(10 N), 1e-5){why}, "
                f"above {self.where} privacy.max_delta = {limit:g}: {'; '.join(over_limit)}. Set "
                f"privacy.target_delta: {limit / 10:.1e} (or loosen the policy)")

    # -- data ----------------------------------------------------------------------------------

    def _hub_source(self) -> bool:
        data = self.config.data
        path = Path(data.source)
        if data.source.startswith("builtin:"):
            return False
        return data.format == "hf" or (data.format == "auto" and not path.exists() and not path.suffix)

    def header(self) -> list[str] | None:
        """The data file's columns (None, with a warning or problem, when they cannot be read)."""
        if self._header_read:
            return self._header
        self._header_read = True
        if self._hub_source():
            self.report.warnings.append(f"data.source {self.config.data.source!r} is a `datasets` hub name: its "
                                        "columns and sizes are checked when training loads it, not here")
            return None
        from secure_ft.records.data import read_table

        try:
            frame, _ = read_table(self.config.data.source, self.config.data.format, self.config.data.hf_split)
        except DataError as error:
            self.problems.append(f"data.source: {error}")
            return None
        self._header = [str(column) for column in frame.columns]
        return self._header

    def splits(self):
        """The run's splits, loaded once (None, with a problem, when they cannot be)."""
        if not hasattr(self, "_splits"):
            from secure_ft.records.data import load_splits

            try:
                self._splits = load_splits(self.config.data, self.config.seed, keep_declared_labels=self.deployed)
            except DataError as error:
                self.problems.append(f"data: {error}")
                self._splits = None
        return self._splits

    def training_sizes(self) -> dict[str, int] | None:
        """Scope → training rows whose δ the run uses: the split (central) or each simulated site."""
        if self._hub_source():
            self.header()  # records the warning
            return None
        splits = self.splits()
        if splits is None:
            return None
        self.report.train_rows = len(splits.train)
        if self.config.mode != "federated":
            return {"run": len(splits.train)}
        if self.deployed:
            if self.config.privacy.mode == "dp" and self.config.privacy.target_delta is None:
                self.report.warnings.append("each deployed site's δ = 1/(10 N) of its own N is not known before the "
                                            "sites answer; the gate checks it against privacy.max_delta")
            return {}
        from federated.partition import partition_sites

        try:
            sites = partition_sites(splits, self.config.federated, self.config.seed, quiet=True)
        except (ConfigError, DataError) as error:
            self.problems.append(str(error))
            return None
        self.report.site_train_rows = {site.name: len(site.train) for site in sites}
        return {f"site:{site.name}": len(site.train) for site in sites}


def planned_history(config: RunConfig, train_rows: int) -> tuple[list[list[float]] | None, float | None, str]:
    """The (σ, q, steps) a central run will take, its δ, and the mechanism in words (None: not private).

    The same arithmetic as training: q = 1 / (batches per epoch), σ as configured or
    calibrated by `accountants.calibrate_noise` to reach target_epsilon after training.epochs,
    and with a fixed σ and a target the steps that stay within it.
    """
    from secure_ft.privacy.accountants import calibrate_noise, steps_within_budget
    from secure_ft.privacy.engine import resolve_delta
    from secure_ft.training.transfer_choice import resolve_run_config

    if config.privacy.mode != "dp":
        return None, None, "none (not private: ε = ∞)"
    config, _ = resolve_run_config(config, train_rows)  # the batch size and epochs training will use
    settings, training = config.privacy, config.training
    delta, _ = resolve_delta(settings, train_rows)
    batches = math.ceil(train_rows / min(training.batch_size, train_rows))
    rate = 1 / batches
    steps = batches * training.epochs
    if training.max_steps:
        steps = min(steps, training.max_steps)
    if settings.noise_multiplier is not None:
        sigma = float(settings.noise_multiplier)
        if settings.target_epsilon is not None:
            steps = steps_within_budget(settings.accountant, (), sigma, rate, delta, settings.target_epsilon, steps)
    else:
        sigma = calibrate_noise(settings.accountant, target_epsilon=settings.target_epsilon, delta=delta,
                                sample_rate=rate, epochs=training.epochs)
    return [[sigma, rate, steps]], delta, f"DP-SGD σ={sigma:.4g} q={rate:.4g} ×{steps}"


def planned_federation_history(config: RunConfig, splits) -> tuple[list[list[float]] | None, float | None, str]:
    """The (σ, q, steps) every site of a simulated federation will take, one after another, and the smallest δ.

    The sites' histories are concatenated: the data set's ledger composes them sequentially
    (`federated.simulation_budget` says why parallel composition is not claimed). The config
    is resolved from the whole file's rows, as the coordinator resolves it before sending it.
    """
    from federated.partition import partition_sites
    from federated.site_policy import planned_site_history
    from secure_ft.training.transfer_choice import resolve_run_config

    if config.privacy.mode != "dp":
        return None, None, "federated simulation without per-site DP (not private at the record level: ε = ∞)"
    config, _ = resolve_run_config(config, len(splits.train))
    sites = partition_sites(splits, config.federated, config.seed, quiet=True)
    history, deltas, parts, plans = [], [], [], {}
    for site in sites:
        if len(site.train) not in plans:  # the plan depends on the rows only: calibrate σ once per size
            plans[len(site.train)] = planned_site_history(config, len(site.train), None)
        planned, delta = plans[len(site.train)]
        history += planned
        deltas.append(delta)
        parts += [f"{site.name} σ={s:.4g} q={q:.4g} ×{int(k)}" for s, q, k in planned]
    return history, min(deltas), (f"federated simulation, {len(sites)} sites composed sequentially "
                                  f"(conservative): " + "; ".join(parts))


def planned_canary_history(config: RunConfig, train_rows: int, run_history: list[list[float]] | None
                           ) -> tuple[list[list[float]] | None, str]:
    """What the privacy audit's canary run will spend (`audits._canary.canary_plan`), and its words.

    The canary run copies the audited run's noise multiplier from ``privacy.json``
    (`audits._guarantee.PrivacyGuarantee.canary_noise`): a central DP run's σ (the one
    `planned_history` computes); a simulated federation's least noisy site's σ (the smallest
    in the sites' plan). No DP anywhere: the canary run trains without DP (ε = ∞).
    """
    from audits._canary import canary_plan

    sigma = min(step[0] for step in run_history) if run_history else None
    history = canary_plan(config, train_rows, sigma, config.privacy.max_grad_norm if sigma is not None else None)
    if history is None:
        return None, ("canary audit: a throw-away run without DP on up to 512 training rows (the audited run "
                      "states no noise multiplier), not private: ε = ∞")
    s, q, k = history[0]
    return history, f"canary audit: DP-SGD σ={s:.4g} q={q:.4g} ×{int(k)}"


def planned_dataset_spend(config: RunConfig, splits, policy: Policy) -> dict:
    """The data set's ε spent so far, this run's planned ε and the cumulative ε after it, by the accountant.

    The run's plan is a central run's (σ, q, steps), or every simulated site's; when the
    privacy audit will run canaries (``audits.privacy.canaries`` > 0) their throw-away run is
    planned too — it is recorded as an entry of its own before the audit re-reads the ledger.
    """
    from secure_ft.privacy.budget_composition import (COMPOSING_ACCOUNTANT, budget_delta, compose_ledger,
                                                       composed_epsilon)
    from secure_ft.privacy.budget_ledger import BudgetLedger, budget_dir_for, counted_history

    folder = budget_dir_for(config)
    entries = BudgetLedger(folder).entries(splits.fingerprint)
    if config.mode == "federated":
        history, run_delta, mechanism = planned_federation_history(config, splits)
    else:
        history, run_delta, mechanism = planned_history(config, len(splits.train))
    planned_runs = [history]
    if "privacy" in policy.required_audits and config.audits.privacy.canaries:
        canary, words = planned_canary_history(config, len(splits.train), history)
        planned_runs.append(canary)
        mechanism = f"{mechanism}; {words}"
    delta = budget_delta(entries, policy.privacy.max_delta, run_delta)
    spent = compose_ledger(splits.fingerprint, entries, delta, running=False).cumulative_epsilon if entries else 0.0
    if any(run is None for run in planned_runs) or delta is None:
        planned = after = math.inf
    else:
        planned = composed_epsilon(planned_runs, delta)
        recorded = [None if entry["mechanism"] == "none" else counted_history(entry) for entry in entries]
        after = composed_epsilon([*recorded, *planned_runs], delta)
    finite = lambda value: value if math.isfinite(value) else None  # noqa: E731 (JSON: null = ∞)
    return {"fingerprint": splits.fingerprint, "budget_dir": str(folder), "runs": len(entries),
            "accountant": COMPOSING_ACCOUNTANT, "delta": delta, "spent_epsilon": finite(spent),
            "planned_epsilon": finite(planned), "planned_mechanism": mechanism, "after_epsilon": finite(after),
            "planned_history": [segment for run in planned_runs if run is not None for segment in run],
            "limit": policy.privacy.max_dataset_epsilon}


def central_client_epsilon(config: RunConfig) -> float:
    """ε of the central client-level guarantee after every round releases an aggregate.

    Computed as the run records it (`federated.central_dp.central_guarantee`: one Gaussian
    release per round, no amplification claimed, Opacus' RDP accountant), so the number matches
    the one the run will record; a round that releases nothing only lowers it.
    """
    from secure_ft.privacy.accountants import epsilon_from_history

    federated = config.federated
    return epsilon_from_history("rdp", ((float(federated.central_noise_multiplier), 1.0, int(federated.rounds)),),
                                float(federated.central_delta))
