"""The DP-SGD engine: Opacus wrapped around the one training loop (`secure_ft.training.training_loop`).

`PrivateEngine` plugs Poisson sampling, per-sample clipping, calibrated Gaussian noise and
accounting (see `secure_ft.privacy`) into `fit` through the `TrainingEngine` hooks: it wraps
the loop's own model, optimizer and loader, reports ε in the progress bar and after every
epoch, and stops the run cleanly before a step that would exceed ``target_epsilon``. Under
``torchrun`` (several processes) it trains one central DP model with Opacus' distributed
support (`secure_ft.privacy.sharded_poisson`, `secure_ft.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from secure_ft.errors import CheckpointError, PrivacyError
from secure_ft.privacy.accountant_history import AccountantHistory, finite_or_none
from secure_ft.privacy.accountants import BudgetUnreachable, calibrate_noise, get_accountant, steps_within_budget
from secure_ft.privacy.budget_ledger import RunSpend, steps_beyond
from secure_ft.privacy.per_sample_gradients import choose_grad_sample_mode, make_compatible
from secure_ft.records.config import PrivacyConfig, RunConfig
from secure_ft.records.run_directory import ACCOUNTANT_HISTORY_FILE, PRIVACY_FILE, RunDirectory
from secure_ft.training.multiplicity import copies_per_example, group_copies_before_clipping
from secure_ft.training.training_loop import FitResult, Prepared, TrainingEngine

log = logging.getLogger(__name__)

REPORT_SECONDS = 5.0  # least time between two ε updates of the progress bar
RESERVE_STEPS = 10  # least steps the budget entry reserves ahead (a hard kill over-states by at most this)


DEFAULT_DELTA_CAP = 1e-5  # the usual ceiling in DP practice; small sites would otherwise get δ ≈ 3e-4


def default_delta(dataset_size: int) -> float:
    """δ = min(1/(10 N), 1e-5): well below the 1/N at which δ stops meaning anything, and never above 1e-5."""
    return min(1.0 / (10 * dataset_size), DEFAULT_DELTA_CAP)


def resolve_delta(settings: PrivacyConfig, dataset_size: int) -> tuple[float, str]:
    """The δ of a run and where it came from; δ ≥ 1/N is refused."""
    if dataset_size < 1:
        raise PrivacyError("privacy: the training split is empty; DP training needs training examples")
    if settings.target_delta is None:
        return default_delta(dataset_size), f"default min(1/(10 N), {DEFAULT_DELTA_CAP:g}) with N = {dataset_size}"
    if settings.target_delta >= 1.0 / dataset_size:
        raise PrivacyError(
            f"privacy.target_delta = {settings.target_delta:g} is not below 1/N = {1.0 / dataset_size:g} for the "
            f"N = {dataset_size} training examples; such a δ allows leaking whole examples. Set target_delta "
            f"below {1.0 / dataset_size:.2g} (e.g. {default_delta(dataset_size):.2g}) or leave it null"
        )
    return settings.target_delta, "configured"


def check_secure_mode_available() -> None:
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        raise PrivacyError(
            "privacy.secure_mode: true needs the torchcsprng package (a cryptographically secure generator for "
            "Opacus' sampling and noise), which is not installed and has no build for this torch version. "
            "Set secure_mode: false (noise then comes from torch's default generator, which is fine for "
            "evaluation but not against an adversary who can predict it), or install torchcsprng"
        ) from None


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of a running torch.distributed job, (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PrivateEngine(TrainingEngine):
    """DP-SGD (Opacus) around the loop's own model, optimizer and data loader."""

    name = "dp"

    def __init__(self, settings: PrivacyConfig, *, dataset_size: int, fingerprint: str = "",
                 transfer: str = "full", epochs: int | None = None, batch_size: int | None = None):
        super().__init__(settings.max_grad_norm)
        self.settings = settings
        self.dataset_size = int(dataset_size)
        self.fingerprint = fingerprint
        self.transfer = transfer
        self.accountant = get_accountant(settings.accountant)
        self.delta, self.delta_source = resolve_delta(settings, self.dataset_size)
        if settings.secure_mode:
            check_secure_mode_available()
        if not self.accountant.rigorous:
            log.warning("DP: %s; use prv (default) or rdp for a guarantee you can defend", self.accountant.note)
        if batch_size is not None and batch_size > self.dataset_size:
            log.warning("DP: training.batch_size %d exceeds the %d training examples; every step samples with "
                        "q = 1", batch_size, self.dataset_size)
        self.planned_epochs = epochs
        self.ledger: AccountantHistory | None = None
        self.grad_sample_mode = ""
        self.grad_sample_reason = ""
        self.group_size = 1  # rows per example: 1 + augmentation copies (set by attach)
        self.noise_source = ""
        self.rank, self.world_size = distributed_world()
        self._privacy_engine = None
        self._optimizer = None
        self._steps_per_epoch = 0
        self._within_budget = math.inf  # steps known to stay within target_epsilon
        self._budget_message: str | None = None
        self._last_epsilon = 0.0
        self._report_every = 1
        self._last_report = -math.inf
        self.sampling_probability = 0.0
        # what the run adds to privacy.json about how it was set up (transfer choice, hyperparameter source)
        self.notes: dict[str, Any] = {}
        # the run's entry in the data set's privacy budget ledger (secure_ft.privacy.budget_ledger), if any
        self.spend: RunSpend | None = None
        self._spend_baseline: list[list[float]] = []  # history restored from a checkpoint: an earlier attempt's
        self._reserved_to = 0  # steps the budget entry already covers (taken + reserved ahead)
        self._planned_steps = 0

    @classmethod
    def from_config(cls, config: RunConfig, *, dataset_size: int, fingerprint: str = "") -> "PrivateEngine":
        return cls(config.privacy, dataset_size=dataset_size, fingerprint=fingerprint,
                   transfer=config.model.transfer, epochs=config.training.epochs,
                   batch_size=config.training.batch_size)

    # -- wrapping ---------------------------------------------------------------------------

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int) -> Prepared:
        from opacus import PrivacyEngine, __version__ as opacus_version

        settings = self.settings
        if len(loader.dataset) != self.dataset_size:
            raise PrivacyError(f"privacy: the engine was built for {self.dataset_size} training examples but the "
                               f"loader holds {len(loader.dataset)}; ε would be computed for the wrong N")
        model.train()  # from_pretrained returns eval mode, which Opacus refuses
        model, optimizer = make_compatible(model, optimizer)
        self.grad_sample_mode, self.grad_sample_reason = choose_grad_sample_mode(model, settings.grad_sample_mode)
        # augmentation multiplicity (secure_ft.training.multiplicity): each item holds an example and its copies
        self.group_size = copies_per_example(loader.dataset)
        if self.group_size > 1 and self.grad_sample_mode == "ghost":
            if settings.grad_sample_mode == "ghost":
                raise PrivacyError("training.robustness.augmentation_copies needs one per-sample gradient per "
                                   "example, averaged over its copies; ghost clipping only sees single rows. Set "
                                   "privacy.grad_sample_mode: auto, bookkeeping or hooks")
            self.grad_sample_mode = "hooks"
            self.grad_sample_reason += "; augmentation copies are averaged per example before clipping: hooks"
        self.planned_epochs = epochs
        poisson_in_opacus = True
        if self.world_size > 1:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

            from secure_ft.privacy.sharded_poisson import sharded_poisson_loader

            model = DifferentiallyPrivateDistributedDataParallel(model)
            loader = sharded_poisson_loader(loader, self.rank, self.world_size)
            poisson_in_opacus = False  # the sharded loader already samples (see secure_ft.distributed)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="GDP accounting is experimental")
            engine = PrivacyEngine(accountant=settings.accountant, secure_mode=settings.secure_mode)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Ignoring drop_last.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="opacus.privacy_engine")
            warnings.filterwarnings("ignore", message="Optimal order is the")
            if self.grad_sample_mode == "bookkeeping":
                dp_model, dp_optimizer, criterion, dp_loader = self._wrap_bookkeeping(
                    engine, model, optimizer, loader, epochs, poisson_in_opacus)
            else:
                dp_model, dp_optimizer, criterion, dp_loader = self._wrap_with_opacus(
                    engine, model, optimizer, loader, epochs, poisson_in_opacus)
        if not poisson_in_opacus and hasattr(dp_model, "forbid_grad_accumulation"):
            dp_model.forbid_grad_accumulation()  # what make_private does when it samples itself
        self._privacy_engine, self._optimizer = engine, dp_optimizer
        # the rate Opacus' accountant hook uses (1 / steps per epoch); the sampler's own
        # probability 1 / len(loader) is never larger, so accounting with this one is safe
        sample_rate = 1 / len(dp_loader)
        self.sampling_probability = 1 / len(loader)
        self._steps_per_epoch = len(dp_loader)
        self._report_every = max(1, self._steps_per_epoch // 4)
        self.ledger = AccountantHistory(
            accountant=settings.accountant, sample_rate=sample_rate,
            noise_multiplier=float(dp_optimizer.noise_multiplier), max_grad_norm=settings.max_grad_norm,
            delta=self.delta, dataset_size=self.dataset_size, fingerprint=self.fingerprint,
            target_epsilon=settings.target_epsilon, opacus_version=opacus_version,
        )
        self._planned_steps = self._steps_per_epoch * epochs
        self._plan_budget(self._planned_steps)
        self._reserve_ahead(0)
        log.info("DP-SGD: σ = %.4f (%s), q = %.5f (expected logical batch %.1f), C = %g, δ = %.3g, accountant %s, "
                 "per-sample gradients: %s (%s)%s", self.ledger.noise_multiplier, self.noise_source, sample_rate,
                 sample_rate * self.dataset_size, settings.max_grad_norm, self.delta, settings.accountant,
                 self.grad_sample_mode, self.grad_sample_reason,
                 f", {self.world_size} processes" if self.world_size > 1 else "")
        return Prepared(dp_model, dp_optimizer, dp_loader, criterion)

    def _noise_multiplier(self, loader: DataLoader, epochs: int) -> float:
        """The configured σ, or the one that reaches target_epsilon after `epochs` (`calibrate_noise`)."""
        settings = self.settings
        if settings.noise_multiplier is not None:
            self.noise_source = "configured"
            return settings.noise_multiplier
        sample_rate = 1 / len(loader)
        self.noise_source = (f"calibrated to target_epsilon={settings.target_epsilon:g} over {epochs} epochs "
                             "(secure_ft.privacy.accountants.calibrate_noise)")
        try:
            return calibrate_noise(settings.accountant, target_epsilon=settings.target_epsilon, delta=self.delta,
                                   sample_rate=sample_rate, epochs=epochs)
        except BudgetUnreachable:
            raise self._unreachable(sample_rate, epochs) from None

    def _unreachable(self, sample_rate: float, epochs: int) -> PrivacyError:
        return PrivacyError(
            f"privacy.target_epsilon = {self.settings.target_epsilon:g} cannot be reached in {epochs} epochs with "
            f"q = {sample_rate:.4g} and δ = {self.delta:.2g} even with σ = 10⁶; raise target_epsilon, lower "
            "training.batch_size or train fewer epochs")

    def _wrap_with_opacus(self, engine, model, optimizer, loader, epochs, poisson_in_opacus):
        """Opacus' make_private(_with_epsilon) with one of its per-sample gradient modes."""
        settings = self.settings
        common = dict(module=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), data_loader=loader,
                      max_grad_norm=settings.max_grad_norm, poisson_sampling=poisson_in_opacus,
                      grad_sample_mode=self.grad_sample_mode)
        # the same σ make_private_with_epsilon would find: it calls the same Opacus search
        wrapped = engine.make_private(noise_multiplier=self._noise_multiplier(loader, epochs), **common)
        if len(wrapped) == 4:
            return wrapped
        dp_model, dp_optimizer, dp_loader = wrapped
        # one row per example, the mean of its copies' rows, before Opacus clips (no-op without copies)
        group_copies_before_clipping(dp_optimizer, self.group_size)
        return dp_model, dp_optimizer, nn.CrossEntropyLoss(), dp_loader

    def _wrap_bookkeeping(self, engine, model, optimizer, loader, epochs, poisson_in_opacus):
        """Book-keeping clipping (`secure_ft.privacy.bookkeeping_clipping`) with Opacus' sampler, optimizer and accountant.

        Mirrors make_private: Poisson DPDataLoader, the fast-gradient-clipping DP optimizer
        (noise on the clipped sum, scaled by the expected batch size), the accountant's hook.
        """
        from opacus.data_loader import DPDataLoader
        from opacus.optimizers import get_optimizer_class

        from secure_ft.privacy.bookkeeping_clipping import BookKeepingLoss, BookKeepingModule
        from secure_ft.training.multiplicity import GroupedBookKeepingLoss, GroupedBookKeepingModule

        settings = self.settings
        sigma = self._noise_multiplier(loader, epochs)
        dp_loader = (DPDataLoader.from_data_loader(loader, generator=engine.secure_rng) if poisson_in_opacus
                     else loader)
        sample_rate = 1 / len(dp_loader)
        expected_batch_size = int(len(dp_loader.dataset) * sample_rate) / self.world_size  # per process
        if self.group_size > 1:  # the mean gradient of each example's copies is its per-sample gradient
            module = GroupedBookKeepingModule(model, settings.max_grad_norm, self.group_size)
            criterion = GroupedBookKeepingLoss(module)
        else:
            module = BookKeepingModule(model, settings.max_grad_norm)
            criterion = BookKeepingLoss(module)
        optimizer_class = get_optimizer_class(clipping="flat", distributed=self.world_size > 1,
                                              grad_sample_mode="ghost")
        dp_optimizer = optimizer_class(optimizer, noise_multiplier=sigma, max_grad_norm=settings.max_grad_norm,
                                       expected_batch_size=expected_batch_size, loss_reduction="mean",
                                       generator=engine.secure_rng, secure_mode=settings.secure_mode)
        dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        return module, dp_optimizer, criterion, dp_loader

    def _plan_budget(self, planned_steps: int) -> None:
        """How many steps stay within target_epsilon, so the per-step budget check costs nothing."""
        ledger = self.ledger
        if ledger.target_epsilon is None:
            self._within_budget = math.inf
            return
        remaining = max(0, planned_steps - ledger.steps)
        extra = steps_within_budget(ledger.accountant, ledger.history_tuple(), ledger.noise_multiplier,
                                    ledger.sample_rate, ledger.delta, ledger.target_epsilon, remaining)
        self._within_budget = ledger.steps + extra
        if extra < remaining:
            log.warning("DP: target_epsilon=%g allows %d of the %d planned steps; training will stop there",
                        ledger.target_epsilon, self._within_budget, planned_steps)

    # -- the loop's hooks ---------------------------------------------------------------------

    def begin_epoch(self, prepared: Prepared, epoch: int, seed: int) -> None:
        if self.settings.secure_mode:
            return  # a cryptographic generator cannot (and must not) be reseeded
        super().begin_epoch(prepared, epoch, seed)

    @contextlib.contextmanager
    def physical_batches(self, prepared: Prepared) -> Iterator[Iterable]:
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        optimizer = prepared.optimizer
        # a physical batch of E examples holds E·G rows with augmentation copies: keep the rows per pass
        examples = max(1, self.settings.max_physical_batch_size // self.group_size)
        with warnings.catch_warnings(), BatchMemoryManager(data_loader=prepared.loader, max_physical_batch_size=examples,
                                optimizer=optimizer) as batches:
            # Opacus' hooks trigger this on every backward when the input embeddings are frozen
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            def physical() -> Iterator:
                for batch in batches:
                    # The splitting sampler queued one "skip step?" flag for this batch. A resumed
                    # epoch passes over batches it already trained on without stepping, so keep
                    # only the flag of the batch being handed out.
                    del optimizer._step_skip_queue[:-1]
                    yield batch

            yield physical()

    def before_step(self, prepared: Prepared) -> None:
        """Opacus clips per sample inside optimizer.step(); only an empty Poisson batch needs help.

        An empty logical batch still takes a (noise-only) step, as the analysis assumes; the
        loop skips forward/backward for it, so give Opacus zero-size per-sample gradients.
        """
        for parameter in self._optimizer.params:
            if self.grad_sample_mode in ("ghost", "bookkeeping"):
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
            elif getattr(parameter, "grad_sample", None) is None:
                parameter.grad_sample = torch.zeros((0, *parameter.shape), dtype=parameter.dtype,
                                                    device=parameter.device)

    def step_taken(self, prepared: Prepared) -> bool:
        return not self._optimizer._is_last_step_skipped

    def steps_per_epoch(self, loader: DataLoader) -> int:
        return len(loader)

    def accountant_history(self) -> list[list[float]]:
        """The accountant's (σ, q, steps) entries so far, as a JSON-ready list."""
        return [list(entry) for entry in self._sync().history_tuple()]

    def _sync(self) -> AccountantHistory:
        self.ledger.history = [list(entry) for entry in self._privacy_engine.accountant.history]
        return self.ledger

    def after_step(self, steps: int) -> dict[str, float]:
        ledger = self._sync()
        if ledger.steps != steps:
            raise PrivacyError(f"privacy accounting is out of step: the loop took {steps} steps but the accountant "
                               f"recorded {ledger.steps}; the run's ε cannot be trusted, stop and report this")
        if steps >= self._reserved_to:  # before the next step runs, its spend is on the data set's ledger
            self._reserve_ahead(steps)
        # the bar's ε only: computing it costs 0.1–0.2 s (PRV, one-step RDP remembered; the first 0.6 s),
        # more than a whole step of a probe head
        if steps % self._report_every == 0 and time.monotonic() - self._last_report >= REPORT_SECONDS:
            self._last_epsilon = ledger.epsilon()
            self._last_report = time.monotonic()
        return {"epsilon": self._last_epsilon}

    # -- the data set's privacy budget ledger ---------------------------------------------------

    def _spent_here(self) -> list[list[float]]:
        """The steps this process took (a resumed attempt: those after its checkpoint)."""
        return steps_beyond(self.accountant_history(), self._spend_baseline)

    def _reserve_ahead(self, steps: int) -> None:
        """Record the steps taken and, before they run, the next ones, in the budget entry.

        A quarter epoch at a time, at least RESERVE_STEPS (a probe's epoch may be a few steps:
        one durable write per step would cost more than the step), never beyond the plan.
        """
        if self.spend is None or self.rank != 0 or self.ledger is None:
            return
        chunk = max(self._steps_per_epoch // 4, RESERVE_STEPS)
        if self._planned_steps > steps:
            chunk = min(chunk, self._planned_steps - steps)
        self.spend.reserve(self._spent_here(), [[self.ledger.noise_multiplier, self.ledger.sample_rate, chunk]])
        self._reserved_to = steps + chunk

    def close_spend(self, status: str, reason: str | None = None) -> None:
        """Close the budget entry with the exact steps taken (finished, stopped or crashed)."""
        if self.spend is None or self.rank != 0:
            return
        taken = self._spent_here() if self._privacy_engine is not None else []
        self.spend.close(taken, status, reason)

    def stop_reason(self) -> str | None:
        ledger = self.ledger
        if ledger.target_epsilon is None or self._budget_message is not None:
            return self._budget_message
        steps = ledger.steps
        if steps + 1 <= self._within_budget:
            return None
        next_epsilon = ledger.epsilon(extra_steps=1)
        if next_epsilon <= ledger.target_epsilon:
            self._within_budget = steps + 1
            return None
        self._budget_message = (
            f"privacy budget exhausted: step {steps + 1} would raise ε from {ledger.epsilon():.4f} to "
            f"{next_epsilon:.4f}, above target_epsilon={ledger.target_epsilon:g} (δ={ledger.delta:.3g}); "
            f"stopped after {steps} steps"
        )
        ledger.events.append({"event": "budget_exhausted", "step": steps, "next_epsilon": next_epsilon})
        log.warning("DP: %s", self._budget_message)
        return self._budget_message

    def epoch_metrics(self) -> dict[str, Any]:
        ledger = self._sync()
        self._last_epsilon = ledger.record_epsilon(ledger.steps)
        return {"epsilon": finite_or_none(self._last_epsilon)}

    def unwrap(self, model: nn.Module) -> nn.Module:
        from opacus.grad_sample import AbstractGradSampleModule
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

        from secure_ft.privacy.bookkeeping_clipping import BookKeepingModule

        if isinstance(model, (AbstractGradSampleModule, BookKeepingModule)):
            model = model._module
        if isinstance(model, (DifferentiallyPrivateDistributedDataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        return model

    # -- persistence ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self._sync().to_dict(), "accountant": self.ledger.accountant_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = AccountantHistory.from_dict(state.get("ledger"), "checkpoint privacy ledger")
        current = self.ledger
        for name in ("accountant", "sample_rate", "max_grad_norm", "delta", "dataset_size", "fingerprint"):
            if getattr(saved, name) != getattr(current, name):
                raise CheckpointError(
                    f"checkpoint privacy ledger: {name} was {getattr(saved, name)!r} but this run has "
                    f"{getattr(current, name)!r}; resuming would mix two accountings. Resume with the same "
                    "config and data, or start a new run")
        if saved.noise_multiplier != current.noise_multiplier:
            # the ledger is authoritative: continue with the noise the run was started with
            log.warning("DP: recalibrated σ %.6f differs from the checkpoint's %.6f; continuing with the checkpoint's",
                        current.noise_multiplier, saved.noise_multiplier)
            self._optimizer.noise_multiplier = saved.noise_multiplier
        self._privacy_engine.accountant.load_state_dict(
            {"history": [tuple(entry) for entry in saved.history_tuple()], "mechanism": saved.accountant})
        saved.target_epsilon = current.target_epsilon
        saved.events.append({"event": "resumed", "step": saved.steps})
        self.ledger = saved
        # the steps up to the checkpoint were recorded by the attempt that took them
        self._spend_baseline = [list(entry) for entry in saved.history_tuple()]
        if self.spend is not None and self.rank == 0:
            self.spend.resumed_from(saved.steps)
            self._reserve_ahead(saved.steps)
        self._last_epsilon = saved.epsilon()
        self._plan_budget(self._steps_per_epoch * (self.planned_epochs or 0))
        log.info("DP: resumed the privacy ledger at step %d (ε = %.4f)", saved.steps, self._last_epsilon)

    def guarantee(self, result: FitResult | None = None) -> dict[str, Any]:
        """The privacy.json payload: enough for an auditor to recompute ε."""
        from opacus import __version__ as opacus_version

        ledger = self._sync()
        epsilon = ledger.record_epsilon(ledger.steps)
        stopped = result.stopped_reason if result is not None else None
        return {
            "epsilon": finite_or_none(epsilon),  # null: no finite guarantee
            "delta": ledger.delta,
            "accountant": ledger.accountant,
            "noise_multiplier": ledger.noise_multiplier,
            "max_grad_norm": ledger.max_grad_norm,
            "sample_rate": ledger.sample_rate,
            "sampling_probability": self.sampling_probability,
            "steps": ledger.steps,
            "epochs": len(result.history) if result is not None else None,
            "dataset_size": ledger.dataset_size,
            "trained": self.transfer,
            "opacus_version": opacus_version,
            "epsilon_history": ledger.epsilon_history,
            "target_epsilon": ledger.target_epsilon,
            "delta_source": self.delta_source,
            "noise_source": self.noise_source,
            "epochs_planned": self.planned_epochs,
            "steps_per_epoch": self._steps_per_epoch,
            "expected_batch_size": ledger.sample_rate * ledger.dataset_size,
            "max_physical_batch_size": self.settings.max_physical_batch_size,
            "poisson_sampling": True,
            "grad_sample_mode": self.grad_sample_mode,
            "grad_sample_mode_reason": self.grad_sample_reason,
            "rows_per_example": self.group_size,  # > 1: augmentation copies averaged before clipping
            "secure_mode": self.settings.secure_mode,
            "world_size": self.world_size,
            "data_fingerprint": ledger.fingerprint,
            "stopped_early": self._budget_message is not None and stopped == self._budget_message,
            "stop_reason": stopped,
            "ledger": ACCOUNTANT_HISTORY_FILE,
            "accountant_note": self.accountant.note,
            **self.notes,
        }

    def write_artifacts(self, run_dir, result: FitResult) -> list[str]:
        guarantee = self.guarantee(result)
        self.ledger.save(Path(run_dir))
        RunDirectory(run_dir).write_privacy(guarantee)
        return [PRIVACY_FILE, ACCOUNTANT_HISTORY_FILE]
