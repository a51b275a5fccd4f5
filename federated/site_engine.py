"""The training engine of one site's round: plain or DP-SGD, plus FedProx and the site's privacy ledger.

A site trains many short rounds but has one privacy budget. Its DP-SGD engine
(`secure_ft.privacy.engine.PrivateEngine`) is therefore set up once for the whole run: the
noise multiplier σ is calibrated (by `secure_ft.privacy.accountants`, exactly as for a central
run) so that `rounds × local_epochs` epochs end at
`privacy.target_epsilon` (which stays a hard cap), and the accountant's history is carried
from round to round (`SiteEngine.state_dict` → Flower's per-site `Context.state` → the next
round's `restore`). A site can thus never spend more than its budget, however many rounds
the server asks for: the loop stops before the step that would exceed it.

FedProx adds μ/2·‖w − w_global‖² to each site's objective. Its gradient μ(w − w_global)
depends on no training example, so it is added to the update after DP noise (an optimizer
pre-step hook on the underlying torch optimizer) and costs no privacy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from secure_ft.errors import PrivacyError
from secure_ft.records.config import RunConfig
from secure_ft.training.training_loop import FitResult, Prepared, TrainingEngine

log = logging.getLogger(__name__)


def planned_epochs(config: RunConfig) -> int:
    """Epochs a site trains over the whole run (its DP budget covers all of them)."""
    return config.federated.rounds * config.federated.local_epochs


def site_noise_multiplier(config: RunConfig, dataset_size: int) -> float:
    """σ that makes a site's whole participation end at `privacy.target_epsilon`.

    Uses the sampling rate the private engine will use (1 / batches per epoch) and the
    site's δ (`privacy.target_delta`, else 1/(10 N) for the site's N rows).
    """
    from secure_ft.privacy.accountants import BudgetUnreachable, require_usable_at_sites
    from secure_ft.privacy.engine import resolve_delta

    settings = config.privacy
    require_usable_at_sites(settings.accountant)
    if settings.noise_multiplier is not None:
        return settings.noise_multiplier
    delta, _ = resolve_delta(settings, dataset_size)
    batches = math.ceil(dataset_size / min(config.training.batch_size, dataset_size))
    steps_per_round = config.federated.local_epochs * batches
    if config.federated.local_steps:
        steps_per_round = min(steps_per_round, config.federated.local_steps)
    epochs = config.federated.rounds * steps_per_round / batches  # opacus counts steps as epochs / rate
    try:
        return _calibrated_noise(settings.accountant, float(settings.target_epsilon), float(delta), 1 / batches,
                                 float(epochs))
    except BudgetUnreachable as error:
        raise PrivacyError(
            f"privacy.target_epsilon = {settings.target_epsilon:g} cannot be reached by a site with {dataset_size} "
            f"rows over {epochs:g} epochs ({error}); raise target_epsilon or train fewer rounds"
        ) from None


@functools.lru_cache(maxsize=128)
def _calibrated_noise(accountant: str, target_epsilon: float, delta: float, sample_rate: float, epochs: float) -> float:
    """`calibrate_noise`, once per setting in a process: the coordinator, pre-flight and in-process sites ask
    for the same σ, and a PRV calibration takes seconds."""
    from secure_ft.privacy.accountants import calibrate_noise

    return calibrate_noise(accountant, target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                           epochs=epochs)


def private_site_engine(config: RunConfig, dataset_size: int, fingerprint: str, sigma: float) -> TrainingEngine:
    """The Opacus engine for a site: fixed σ for the run, `target_epsilon` as the hard cap."""
    from secure_ft.privacy.engine import PrivateEngine

    settings = config.privacy.model_copy(update={"noise_multiplier": sigma})
    return PrivateEngine(settings, dataset_size=dataset_size, fingerprint=fingerprint, transfer=config.model.transfer,
                         epochs=planned_epochs(config), batch_size=config.training.batch_size)


class SiteEngine(TrainingEngine):
    """Wraps the site's plain or private engine; adds FedProx and carries DP state across rounds.

    Parameters
    ----------
    inner
        `TrainingEngine` (plain) or `PrivateEngine` (DP-SGD).
    proximal_mu
        FedProx μ; 0 disables the proximal term.
    restore
        The inner engine's `state_dict()` from this site's previous round (DP ledger), or None.
    """

    def __init__(self, inner: TrainingEngine, *, proximal_mu: float = 0.0, restore: dict[str, Any] | None = None):
        super().__init__(inner.max_grad_norm)
        self.inner = inner
        self.name = inner.name
        self.proximal_mu = float(proximal_mu)
        self.restore = restore
        self._hook = None
        self._step_offset = 0  # steps this site took in earlier rounds (the loop counts from 0 each round)

    @property
    def private(self) -> bool:
        return self.inner.name == "dp"

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, epochs: int) -> Prepared:
        anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
        prepared = self.inner.attach(model, optimizer, loader, epochs)
        if self.restore is not None:
            self.inner.load_state_dict(self.restore)
            ledger = getattr(self.inner, "ledger", None)
            self._step_offset = ledger.steps if ledger is not None else 0
        if self.proximal_mu > 0:
            self._hook = _register_proximal_hook(prepared.optimizer, anchors, self.proximal_mu)
        return prepared

    def begin_epoch(self, prepared: Prepared, epoch: int, seed: int) -> None:
        self.inner.begin_epoch(prepared, epoch, seed)

    @contextlib.contextmanager
    def physical_batches(self, prepared: Prepared) -> Iterator[Iterable]:
        with self.inner.physical_batches(prepared) as batches:
            yield batches

    def before_step(self, prepared: Prepared) -> None:
        self.inner.before_step(prepared)

    def step_taken(self, prepared: Prepared) -> bool:
        return self.inner.step_taken(prepared)

    def steps_per_epoch(self, loader: DataLoader) -> int:
        return self.inner.steps_per_epoch(loader)

    def after_step(self, steps: int) -> dict[str, float]:
        return self.inner.after_step(steps + self._step_offset)

    def stop_reason(self) -> str | None:
        return self.inner.stop_reason()

    def epoch_metrics(self) -> dict[str, Any]:
        return self.inner.epoch_metrics()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.inner.unwrap(model)

    def write_artifacts(self, run_dir, result: FitResult) -> list[str]:
        return self.inner.write_artifacts(run_dir, result)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def accountant_history(self) -> list[list[float]]:
        """Every (σ, q, steps) the site's accountant composed so far, this run's earlier rounds included."""
        return self.inner.accountant_history() if self.private else []

    def guarantee(self, result: FitResult | None = None) -> dict[str, Any] | None:
        """The site's (ε, δ, ...) so far (private engine only)."""
        return self.inner.guarantee(result) if self.private else None

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _register_proximal_hook(optimizer: torch.optim.Optimizer, anchors: list[tuple[torch.Tensor, torch.Tensor]],
                            mu: float):
    """Add μ(w − w_global) to each gradient right before the torch optimizer applies it.

    The hook sits on the underlying torch optimizer: under Opacus that is the
    ``original_optimizer`` whose step runs after per-sample clipping and noise.
    """
    target = getattr(optimizer, "original_optimizer", optimizer)

    def add_proximal_gradient(_optimizer, _args, _kwargs) -> None:
        with torch.no_grad():
            for parameter, anchor in anchors:
                if parameter.grad is not None:
                    parameter.grad.add_(parameter.detach() - anchor.to(parameter.device), alpha=mu)

    return target.register_step_pre_hook(add_proximal_gradient)
