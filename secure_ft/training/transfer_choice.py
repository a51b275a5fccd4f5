"""`model.transfer: auto`: choose what trains from the training-set size and the privacy target.

The rule, in order (N = training rows; for a federation, all sites' rows together):

1. DP with a target ε ≤ 8, or with a fixed noise multiplier and no target: **probe** when
   N < 7,500, else **lora**. Below a few thousand rows DP-SGD's noise swamps the millions of
   directions LoRA or full fine-tuning move in; the frozen encoder's sentence embeddings and
   a linear head (a few thousand parameters, `secure_ft.training.probe`) learn from the same budget.
   Measured on the 1,070-row finance demo at ε = 8: LoRA test macro-F1 ≈ 0.33 (three classes
   never predicted), probe 0.50–0.59. The switch is bench/small_data_dp.py's crossover on SST-2
   at ε = 8 (test accuracy, probe vs LoRA): 0.753 vs 0.622 at N = 850, 0.752 vs 0.716 at 1,700,
   0.779 vs 0.752 at 4,250, 0.787 vs 0.794 at 8,500, 0.786 vs 0.812 at 17,000; the difference
   crosses zero near 7,400 rows (interpolated in log N between 4,250 and 8,500), so 7,500.
2. DP with a target ε > 8: **lora** (a loose budget lets the adapters learn).
3. Non-private: **probe** when N < 1,000, **full** when N ≥ 20,000, else **lora**. Measured on
   SST-2 (same bench): probe 0.780 vs LoRA 0.771 at N = 850, 0.767 vs 0.797 at 1,700, 0.783 vs
   0.837 at 4,250, so the crossing is near 1,000; the 20,000 switch to full is not measured.

Full fine-tuning is never chosen under DP: its per-sample gradients cost the most and its
noise grows with the parameter count. An explicit ``model.transfer`` is always used as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from secure_ft.errors import ModelError
from secure_ft.records.config import PrivacyConfig, RunConfig
from secure_ft.training.probe_recipe import apply_probe_recipe

PROBE_MAX_ROWS_DP = 7_500
PROBE_MAX_EPSILON = 8.0
PROBE_MAX_ROWS_PLAIN = 1_000
FULL_MIN_ROWS_PLAIN = 20_000
RULE = "secure_ft.training.transfer_choice"


@dataclass(frozen=True)
class TransferChoice:
    """What a run trains and why; recorded in metrics.json, privacy.json and the run ledger."""

    requested: str  # what the config said (auto, probe, lora, ...)
    transfer: str  # what trains
    reason: str
    hyperparameters: str  # "fixed recipe NAME ..." or "configured"
    train_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_transfer(train_rows: int, privacy: PrivacyConfig) -> tuple[str, str]:
    """The transfer `auto` resolves to for `train_rows` training rows, and the reason in words."""
    rows = f"N = {train_rows:,} training rows"
    if privacy.mode == "dp":
        epsilon = privacy.target_epsilon
        if epsilon is not None and epsilon > PROBE_MAX_EPSILON:
            return "lora", f"auto ({RULE}): DP with target ε = {epsilon:g} > {PROBE_MAX_EPSILON:g} → lora"
        budget = f"target ε = {epsilon:g}" if epsilon is not None else "a fixed noise multiplier"
        if train_rows < PROBE_MAX_ROWS_DP:
            return "probe", f"auto ({RULE}): DP with {budget} and {rows} < {PROBE_MAX_ROWS_DP:,} → probe"
        return "lora", f"auto ({RULE}): DP with {budget} and {rows} ≥ {PROBE_MAX_ROWS_DP:,} → lora"
    if train_rows < PROBE_MAX_ROWS_PLAIN:
        return "probe", f"auto ({RULE}): non-private, {rows} < {PROBE_MAX_ROWS_PLAIN:,} → probe"
    if train_rows >= FULL_MIN_ROWS_PLAIN:
        return "full", f"auto ({RULE}): non-private, {rows} ≥ {FULL_MIN_ROWS_PLAIN:,} → full"
    return "lora", f"auto ({RULE}): non-private, {PROBE_MAX_ROWS_PLAIN:,} ≤ {rows} < {FULL_MIN_ROWS_PLAIN:,} → lora"


def resolve_run_config(config: RunConfig, train_rows: int) -> tuple[RunConfig, TransferChoice]:
    """The config a run actually trains with: transfer resolved, the probe recipe applied where unset.

    The result is what a run saves as its config.yaml, so a resumed run (and every federated
    site, which receives it) trains exactly the same way without resolving anything again. A
    built-in data set's shipped ``card:`` statements fill the ones the config leaves null
    (`secure_ft.records.technical_documentation`), so the saved config.yaml, bound by the signed verdict,
    carries the statements the report and the model card show.
    """
    from secure_ft.records.technical_documentation import with_builtin_card

    config = with_builtin_card(config)
    requested = config.model.transfer
    if requested == "auto":
        transfer, reason = choose_transfer(train_rows, config.privacy)
        config = config.model_copy(update={"model": config.model.model_copy(update={"transfer": transfer})})
    else:
        transfer, reason = requested, "configured"
    backend = config.model.resolved_encoder_backend()
    if backend == "onnx" and transfer != "probe":
        raise ModelError(f"model.encoder_backend: onnx runs a frozen encoder, but transfer: auto chose {transfer} "
                         f"({reason}); set transfer: probe or encoder_backend: auto")
    if config.model.quantize != "none" and backend != "onnx":
        raise ModelError(f"model.quantize: {config.model.quantize} quantizes the ONNX encoder, but transfer: "
                         f"{transfer} runs on torch; set quantize: none")
    # saved resolved, like transfer: the effective config and the model card show what ran the encoder
    config = config.model_copy(update={"model": config.model.model_copy(update={"encoder_backend": backend})})
    hyperparameters = "configured"
    if transfer == "probe":
        config, hyperparameters = apply_probe_recipe(config, train_rows)
    return config, TransferChoice(requested, transfer, reason, hyperparameters, int(train_rows))
