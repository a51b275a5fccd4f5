"""The effective config: what a run of a config file will train with, and where each value comes from.

A config file names only what it changes, and a run resolves more before it trains:
``model.transfer: auto`` becomes a transfer from the training rows (`secure_ft.training.transfer_choice`),
a probe run takes its fixed recipe's hyperparameters (`secure_ft.training.probe_recipe`), and a DP run
with ``privacy.target_delta: null`` gets δ = min(1/(10 N), 1e-5). `effective_config` does the same
resolution (on the same data split, so N is the run's) and marks every value with its source:

``file``        set in the config file
``default``     the built-in default
``recipe NAME`` the probe recipe's fixed value
``auto: ...``   chosen at run time, with the reason
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from secure_ft.records.config import RunConfig
from secure_ft.training.probe_recipe import RECIPE_NAME
from secure_ft.training.transfer_choice import TransferChoice, resolve_run_config

FILE, DEFAULT = "file", "default"


@dataclass(frozen=True)
class EffectiveConfig:
    """The resolved config, the training rows it was resolved for and each value's source."""

    config: RunConfig
    train_rows: int
    choice: TransferChoice
    values: dict[str, Any]  # dotted key → the value a run uses
    sources: dict[str, str]  # dotted key → file, default, recipe NAME or auto: reason

    def to_dict(self) -> dict[str, Any]:
        return {"source_file": str(self.config.source_path) if self.config.source_path else None,
                "train_rows": self.train_rows, "transfer_choice": self.choice.to_dict(),
                "settings": {key: {"value": self.values[key], "source": self.sources[key]} for key in self.values}}


def effective_config(config: RunConfig, train_rows: int | None = None,
                     label_names: list[str] | None = None) -> EffectiveConfig:
    """Resolve `config` as a run would and say where each value comes from.

    Parameters
    ----------
    config
        A loaded config (`secure_ft.records.config.load_config`); its file, when it has one, says which
        keys were set there.
    train_rows, label_names
        The training rows N and the class names; default: the configured data is loaded and
        split as a run splits it.
    """
    if train_rows is None:
        from secure_ft.records.data import load_splits

        splits = load_splits(config.data, config.seed)
        train_rows, label_names = len(splits.train), splits.label_names
    resolved, choice = resolve_run_config(config, train_rows)
    before, after = flatten(config), flatten(resolved)
    in_file = _keys_in_file(config.source_path)
    values, sources = {}, {}
    for key, value in after.items():
        values[key] = value
        if key in in_file:
            sources[key] = FILE
        elif key == "model.transfer" and choice.requested == "auto":
            sources[key] = choice.reason
        elif key.startswith("card.") and value != before.get(key):
            sources[key] = f"shipped with {config.data.source} (demo_data CARD.yaml)"
        elif key == "model.encoder_backend" and before.get(key) == "auto":
            sources[key] = (f"auto: transfer {choice.transfer} — " + ("a frozen encoder runs on ONNX Runtime "
                            "(secure_ft.text.onnx_encoder)" if value == "onnx" else "the encoder trains, on torch"))
        elif value != before.get(key) or _recipe_key(key, choice):
            sources[key] = f"recipe {RECIPE_NAME}"
        else:
            sources[key] = DEFAULT
    _resolve_model_reading(resolved, label_names, values, sources)
    if resolved.privacy.mode == "dp" and resolved.privacy.target_delta is None:
        from secure_ft.privacy.engine import default_delta

        if resolved.mode == "federated":
            sources["privacy.target_delta"] = "auto: each site's δ = min(1/(10 N_site), 1e-5) for its own rows"
        else:
            values["privacy.target_delta"] = default_delta(train_rows)
            sources["privacy.target_delta"] = f"auto: min(1/(10 N), 1e-5) for N = {train_rows:,} training rows"
    return EffectiveConfig(resolved, train_rows, choice, values, sources)


def _resolve_model_reading(config: RunConfig, label_names: list[str] | None, values: dict[str, Any],
                           sources: dict[str, str]) -> None:
    """The pooling a probe reads and the head's start, which the run resolves from transfer and label names."""
    from secure_ft.text.label_name_head import resolve_head_init
    from secure_ft.text.models import probe_pooling

    model = config.model
    if model.transfer == "probe" and probe_pooling(model) != model.pooling:
        values["model.pooling"] = probe_pooling(model)
        sources["model.pooling"] = "auto: transfer probe reads the unit-length mean embedding (secure_ft.text.models.probe_pooling)"
    if model.head_init == "auto" and label_names is not None:
        values["model.head_init"] = resolve_head_init(model.head_init, model.transfer, list(label_names))
        sources["model.head_init"] = (f"auto: from transfer {model.transfer} and the label names "
                                      "(secure_ft.text.label_name_head)")


def _recipe_key(key: str, choice: TransferChoice) -> bool:
    """Keys the probe recipe fixes that happen to equal their default (still the recipe's choice)."""
    from secure_ft.training.probe_recipe import RECIPE

    return choice.transfer == "probe" and key.startswith("training.") and key.split(".", 1)[1] in RECIPE


def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key → JSON value of every leaf field of a config (sections recursed, lists kept whole)."""
    out: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(flatten(value, key + "."))
        else:
            out[key] = _json_value(value)
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    return value


def _keys_in_file(path: Path | None) -> set[str]:
    """Dotted keys a config file sets (every prefix of a nested mapping too)."""
    if path is None or not Path(path).is_file():
        return set()
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    keys: set[str] = set()

    def walk(mapping: dict, prefix: str) -> None:
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            keys.add(key)
            if isinstance(value, dict):
                walk(value, key + ".")

    if isinstance(raw, dict):
        walk(raw, "")
    return keys


def render_effective_config(effective: EffectiveConfig) -> str:
    """YAML of the resolved config with each value's source as a trailing comment."""
    where = effective.config.source_path or "the built-in default config"
    lines = [f"# effective config of {where}",
             f"# resolved for N = {effective.train_rows:,} training rows of {effective.config.data.source}",
             "# sources: file = set in the config file, default = built-in, recipe = the probe's fixed recipe, "
             "auto = chosen at run time"]
    written: set[str] = set()
    for key, value in effective.values.items():
        parts = key.split(".")
        for depth in range(len(parts) - 1):
            section = ".".join(parts[:depth + 1])
            if section not in written:
                written.add(section)
                lines.append(f"{'  ' * depth}{parts[depth]}:")
        dumped = yaml.safe_dump({parts[-1]: value}, default_flow_style=True, sort_keys=False, width=10_000).strip()
        dumped = dumped[1:-1] if dumped.startswith("{") else dumped
        lines.append(f"{'  ' * (len(parts) - 1)}{dumped}  # {effective.sources[key]}")
    return "\n".join(lines) + "\n"
