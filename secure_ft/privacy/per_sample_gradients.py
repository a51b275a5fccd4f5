"""Which per-sample gradient method DP-SGD uses for a model, and whether Opacus can train it.

`choose_grad_sample_mode` resolves ``privacy.grad_sample_mode`` (``auto`` = the fastest exact
method that supports the model, with the reason for any fallback); `make_compatible` runs
Opacus' module validation, applies ``ModuleValidator.fix`` where it can, and refuses models
whose trainable layers Opacus cannot compute per-sample gradients for.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from secure_ft.errors import PrivacyError

log = logging.getLogger(__name__)


def _tied_parameters(model: nn.Module) -> list[str]:
    seen: dict[int, str] = {}
    tied = []
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter.requires_grad and id(parameter) in seen:
            tied.append(f"{seen[id(parameter)]} = {name}")
        seen.setdefault(id(parameter), name)
    return tied


def _trains_embeddings(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Embedding) and module.weight.requires_grad for module in model.modules())


def choose_grad_sample_mode(model: nn.Module, requested: str) -> tuple[str, str]:
    """The per-sample gradient method to use and why.

    ``auto`` picks the fastest exact method that supports the model (see
    ``bench/dp_overhead.py``): book-keeping (`secure_ft.privacy.bookkeeping_clipping`: one backward pass, no
    per-sample gradients) for models built from Linear / Embedding / LayerNorm layers, which
    covers BERT-style encoders with or without LoRA. Otherwise ghost clipping when embeddings
    train (hooks would materialise per-sample embedding gradients), else hooks. Ghost clipping
    cannot handle tied parameters; that falls back to hooks. Every fallback is logged with
    its reason.
    """
    from secure_ft.privacy.bookkeeping_clipping import unsupported_layers

    tied = _tied_parameters(model)
    if requested == "ghost" and tied:
        raise PrivacyError(f"privacy.grad_sample_mode: ghost does not support tied parameters ({tied[0]}); "
                           "use hooks or auto")
    unsupported = unsupported_layers(model)
    if requested == "bookkeeping" and unsupported:
        raise PrivacyError(f"privacy.grad_sample_mode: bookkeeping does not support {', '.join(unsupported[:3])}; "
                           "use auto, ghost or hooks")
    if requested != "auto":
        return requested, "configured"
    if not unsupported:
        return "bookkeeping", "auto: book-keeping clipping supports every trainable layer (fastest exact mode)"
    fallback = f"auto: book-keeping does not support {', '.join(unsupported[:2])}"
    if not _trains_embeddings(model):
        reason = f"{fallback}; no trainable embeddings, per-sample gradients are small: hooks"
    elif tied:
        reason = f"{fallback}; ghost clipping does not support tied parameters ({tied[0]}): hooks"
    else:
        log.warning("DP: %s; using ghost clipping", fallback)
        return "ghost", f"{fallback}; trainable embeddings: ghost clipping"
    log.warning("DP: %s", reason)
    return "hooks", reason


def make_compatible(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model Opacus can train (after `ModuleValidator.fix` where needed) and a matching optimizer.

    Raises :class:`PrivacyError` naming the modules Opacus cannot handle even after the fix.
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    problems = [error for error in ModuleValidator.validate(model, strict=False)
                if "training mode" not in str(error)]
    if problems:
        try:
            fixed = ModuleValidator.fix(model)
        except Exception as error:  # a fixer that cannot handle this module's configuration
            raise PrivacyError(f"privacy: the model has modules DP-SGD cannot train ({problems[0]}) and Opacus' "
                               f"ModuleValidator.fix failed on them: {error}") from None
        remaining = ModuleValidator.validate(fixed.train(), strict=False)
        if remaining:
            raise PrivacyError("privacy: the model has modules DP-SGD cannot train, even after Opacus' "
                               f"ModuleValidator.fix: {'; '.join(str(e) for e in remaining[:3])}")
        log.warning("DP: Opacus replaced modules DP-SGD cannot train (%s); the saved model holds the replacements",
                    "; ".join(str(e).split(".")[0] for e in problems[:3]))
        _move_optimizer(optimizer, model, fixed)
        model = fixed
    unsupported = GradSampleModule.validate(model, strict=False)
    if unsupported:
        raise PrivacyError(
            "privacy: Opacus cannot compute per-sample gradients for this model: "
            + "; ".join(str(error).strip() for error in unsupported[:3])
            + ". Freeze those layers (e.g. model.transfer: lora) or replace them with buffer-free equivalents"
        )
    return model, optimizer


def _move_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> None:
    """Point a not-yet-used optimizer at `new`'s parameters (matched by name), keeping its settings."""
    names = {id(p): name for name, p in old.named_parameters()}
    replacements = dict(new.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [replacements[names[id(p)]] for p in group["params"] if names.get(id(p)) in replacements]
    covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
    optimizer.param_groups[0]["params"].extend(p for p in new.parameters() if p.requires_grad and id(p) not in covered)
    optimizer.state.clear()
