"""Secret-sharer canaries: does the training recipe memorise rare, unique strings?

Following Carlini et al. 2019 ("The Secret Sharer"), k random secrets of a fixed format
(``"my account code is d d d d d d"``, each with a random label) are inserted ``repeats``
times into the training rows of a *throw-away* run with the same base model, transfer mode
and, for a DP run, the same noise multiplier and clipping norm as recorded in
``privacy.json``. The real model is never touched. Afterwards each canary's loss (under its
label) is ranked among ``candidates`` random secrets of the same format scored under the same
label::

    exposure = log2(candidates + 1) - log2(rank)       (rank 1 = the canary scores best)

A model that did not memorise a canary ranks it uniformly at random (expected exposure
about 1.4 bits); the maximum is ``log2(candidates + 1)``. Only SHA-256 hashes of the canary
strings leave this module; the strings themselves are never written anywhere.

The throw-away run trains on up to ``MAX_TRAIN_ROWS`` real training rows, and its result (the
exposures) is released in the report: it spends the data set's privacy budget like any run.
It is recorded in the data set's privacy budget ledger (`secure_ft.privacy.budget_ledger`) as
an entry of its own (kind ``canary audit``, the audited run's name): written ahead before its
first step with its planned (σ, q, steps), closed with the Opacus accountant's own history of
the steps it took (q is the sampling rate of its Poisson loader: 1 / batches over the rows
plus the inserted canaries), finished or crashed; a run without DP (the audited run had
none) is recorded as not private (ε = ∞). `canary_plan` gives the same (σ, q, steps) before
anything trains, for pre-flight.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from secure_ft.errors import AuditError
from secure_ft.text.models import apply_transfer, load_base_model, predict

KIND = "canary audit"  # its entry's kind in the privacy budget ledger
ACCOUNTANT = "rdp"  # the throw-away run's Opacus accountant (its history, not its ε, is what the ledger keeps)
PREFIX = "my account code is"
DIGITS = 6
MAX_TRAIN_ROWS = 512  # ordinary training rows mixed with the canaries


@dataclass(frozen=True)
class Canary:
    text: str
    label: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def random_secret(rng: np.random.Generator) -> str:
    return f"{PREFIX} {' '.join(str(digit) for digit in rng.integers(0, 10, DIGITS))}"


def make_canaries(count: int, n_labels: int, rng: np.random.Generator) -> list[Canary]:
    texts: dict[str, None] = {}
    while len(texts) < count:
        texts[random_secret(rng)] = None
    return [Canary(text, int(rng.integers(0, n_labels))) for text in texts]


def exposures(model, tokenizer, canaries: list[Canary], n_candidates: int, rng: np.random.Generator,
              max_length: int, batch_size: int, device: str) -> list[dict]:
    """Rank and exposure of every canary among random candidates of the same format."""
    taken = {canary.text for canary in canaries}
    candidates: dict[str, None] = {}
    while len(candidates) < n_candidates:
        secret = random_secret(rng)
        if secret not in taken:
            candidates[secret] = None
    candidate_probs = predict(model, tokenizer, list(candidates), max_length=max_length, batch_size=batch_size,
                              device=device).probabilities.numpy()
    canary_probs = predict(model, tokenizer, [c.text for c in canaries], max_length=max_length, batch_size=batch_size,
                           device=device).probabilities.numpy()
    tiny = np.finfo(float).tiny
    results = []
    for canary, probs in zip(canaries, canary_probs):
        canary_loss = -math.log(max(float(probs[canary.label]), tiny))
        candidate_losses = -np.log(np.maximum(candidate_probs[:, canary.label], tiny))
        rank = 1 + int((candidate_losses < canary_loss).sum())  # ties favour the canary: cautious
        results.append({
            "sha256": canary.sha256,
            "rank": rank,
            "exposure": math.log2(n_candidates + 1) - math.log2(rank),
        })
    return results


def _forward_kwargs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Explicit contiguous per-sample ids: Opacus mis-handles BERT's broadcast buffers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepted = inspect.signature(base.forward).parameters
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    length = input_ids.shape[1]
    if "position_ids" in accepted:
        kwargs["position_ids"] = torch.arange(length, device=input_ids.device).repeat(input_ids.shape[0], 1)
    if "token_type_ids" in accepted:
        kwargs["token_type_ids"] = torch.zeros_like(input_ids)
    return kwargs


def canary_plan(config, train_rows: int, noise_multiplier: float | None,
                max_grad_norm: float | None) -> list[list[float]] | None:
    """The (σ, q, steps) the throw-away run will take on a run of `config` with `train_rows` rows (None: no DP).

    The arithmetic of `canary_report` and Opacus' Poisson loader: the rows are the sampled
    training rows plus every inserted canary copy, the batch the resolved run's, q = 1 / the
    number of batches, and ``audits.privacy.canary_steps`` steps.
    """
    from secure_ft.training.transfer_choice import resolve_run_config

    if noise_multiplier is None or max_grad_norm is None:
        return None
    settings = config.audits.privacy
    resolved, _ = resolve_run_config(config, train_rows)
    rows = min(MAX_TRAIN_ROWS, train_rows) + settings.canaries * settings.canary_repeats
    batches = math.ceil(rows / min(resolved.training.batch_size, rows))
    return [[float(noise_multiplier), 1 / batches, int(settings.canary_steps)]]


def open_canary_spend(context, private: bool, plan: list[list[float]] | None, rows: int):
    """The canary run's entry in the data set's privacy budget ledger, opened before it trains."""
    from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend, budget_dir_for

    return RunSpend.open(
        BudgetLedger(budget_dir_for(context.config)), fingerprint=context.splits.fingerprint,
        run=Path(context.run_dir).name, run_dir=context.run_dir, kind=KIND, mechanism="dp-sgd" if private else "none",
        accountant=ACCOUNTANT if private else None,
        delta=_audited_delta(context) if private else None, dataset_size=rows,
        details={"audit": "privacy: secret-sharer canaries in a throw-away run (its exposures are released)",
                 "planned": plan})


def _audited_delta(context) -> float:
    """The δ the canary entry is stated at: the audited run's (privacy.json), else the membership audit's default."""
    from audits._guarantee import read_guarantee
    from audits._membership import default_delta

    guarantee = read_guarantee(context.run_dir)
    if guarantee is not None and guarantee.delta is not None:
        return float(guarantee.delta)
    return float(default_delta(len(context.splits.train)))


def train_throwaway(model_config, label_names: list[str], texts: list[str], labels: list[int], *, steps: int,
                    batch_size: int, learning_rate: float, seed: int, device: str,
                    noise_multiplier: float | None = None, max_grad_norm: float | None = None,
                    must_fit: list[str] = (), spend=None):
    """A copy of the base model fine-tuned on `texts` (with DP-SGD when a noise multiplier is given).

    `must_fit` texts (the canaries) must not be truncated at ``model_config.max_length``.
    `spend` (a `secure_ft.privacy.budget_ledger.RunSpend`) is kept current: written ahead
    before the first step, closed with the accountant's history however training ends.
    """
    state: dict = {}  # the Opacus engine, once made: its accountant says what was taken
    try:
        model, tokenizer = _train_throwaway(
            model_config, label_names, texts, labels, steps=steps, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, device=device, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, must_fit=must_fit, spend=spend, state=state)
    except KeyboardInterrupt:
        _close(spend, state.get("engine"), "stopped", "interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        _close(spend, state.get("engine"), "crashed", f"{type(error).__name__}: {error}"[:500])
        raise
    _close(spend, state.get("engine"), "finished")
    return model, tokenizer


def _close(spend, engine, status: str, reason: str | None = None) -> None:
    if spend is None:
        return
    if spend.entry["mechanism"] == "none":
        spend.close(None, status, reason)
    else:  # the accountant's own history; no engine yet: no step was taken
        taken = [] if engine is None else [list(entry) for entry in engine.accountant.history]
        spend.close(taken, status, reason)


def _train_throwaway(model_config, label_names, texts, labels, *, steps, batch_size, learning_rate, seed, device,
                     noise_multiplier, max_grad_norm, must_fit, spend, state):
    from torch.utils.data import DataLoader, TensorDataset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = load_base_model(model_config, label_names)
        longest = max((len(tokenizer(text)["input_ids"]) for text in must_fit), default=0)
        if longest > model_config.max_length:
            raise AuditError(
                f"model.max_length: a canary needs {longest} tokens but the run truncates at {model_config.max_length}; "
                "raise model.max_length or turn the canary test off (audits.privacy.canaries: 0)"
            )
        model = apply_transfer(model, model_config)
        encoded = tokenizer(texts, truncation=True, max_length=model_config.max_length, padding=True, return_tensors="pt")
        dataset = TensorDataset(encoded["input_ids"], encoded["attention_mask"], torch.as_tensor(labels))
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, generator=generator)
        model.to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
        private = noise_multiplier is not None and max_grad_norm is not None
        if private:
            from opacus import PrivacyEngine

            engine = state["engine"] = PrivacyEngine(accountant=ACCOUNTANT)
            model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm, poisson_sampling=True, grad_sample_mode="hooks",
            )
            if spend is not None:  # written ahead: every step this run may take, at its loader's real q
                spend.reserve([], [[float(noise_multiplier), float(loader.sample_rate), int(steps)]])
        step = 0
        while step < steps:
            for input_ids, attention_mask, target in loader:
                if len(target) == 0:  # Poisson sampling can draw an empty batch
                    continue
                optimizer.zero_grad(set_to_none=True)
                kwargs = _forward_kwargs(model._module if private else model, input_ids.to(device), attention_mask.to(device))
                logits = model(**kwargs).logits
                torch.nn.functional.cross_entropy(logits, target.to(device)).backward()
                optimizer.step()
                step += 1
                if step >= steps:
                    break
        if private:
            if hasattr(model, "remove_hooks"):
                model.remove_hooks()
            model = model._module
    return model.eval(), tokenizer


def canary_report(context, noise_multiplier: float | None, max_grad_norm: float | None) -> dict:
    """Insert canaries into a throw-away run like the audited one and measure their exposure."""
    settings = context.config.audits.privacy
    rng = np.random.default_rng(context.config.seed + 7919)  # independent of the bootstrap draws
    label_names = list(context.splits.label_names)
    canaries = make_canaries(settings.canaries, len(label_names), rng)
    train = context.splits.train
    rows = train.sample(n=min(MAX_TRAIN_ROWS, len(train)), random_state=context.config.seed)
    texts = rows["text"].tolist() + [c.text for c in canaries] * settings.canary_repeats
    labels = rows["label"].astype(int).tolist() + [c.label for c in canaries] * settings.canary_repeats
    from secure_ft.training.transfer_choice import resolve_run_config

    # the transfer (and recipe) the audited run resolved `model.transfer: auto` to
    resolved, _ = resolve_run_config(context.config, len(context.splits.train))
    plan = canary_plan(context.config, len(context.splits.train), noise_multiplier, max_grad_norm)
    spend = open_canary_spend(context, plan is not None, plan, len(texts))
    model, tokenizer = train_throwaway(
        resolved.model, label_names, texts, labels, steps=settings.canary_steps,
        batch_size=resolved.training.batch_size, learning_rate=resolved.training.learning_rate,
        seed=context.config.seed, device=context.device, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        must_fit=[canary.text for canary in canaries], spend=spend,
    )
    results = exposures(model, tokenizer, canaries, settings.canary_candidates, rng,
                        context.config.model.max_length, context.config.training.eval_batch_size, context.device)
    values = np.array([result["exposure"] for result in results])
    return {
        "canaries": results,
        "count": settings.canaries,
        "repeats": settings.canary_repeats,
        "candidates": settings.canary_candidates,
        "steps": settings.canary_steps,
        "dp": noise_multiplier is not None and max_grad_norm is not None,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "mean_exposure": float(values.mean()),
        "max_exposure": float(values.max()),
        "max_possible_exposure": math.log2(settings.canary_candidates + 1),
        "chance_exposure": 1 / math.log(2),
        "format": f"{PREFIX} + {DIGITS} random digits; strings are never stored, only their SHA-256",
        "budget_entry": str(spend.path),  # the throw-away run's spend on the data set's privacy budget ledger
        "budget_history": spend.entry["history"] if spend.entry["mechanism"] != "none" else None,
    }
