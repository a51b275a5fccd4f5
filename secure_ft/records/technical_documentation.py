"""Technical documentation of a run: the ``card:`` statements and what a policy requires of them.

The statements (intended purpose, out-of-scope uses, known limitations, de-identification,
data provenance) are written by the people responsible for the model in the run config's
``card:`` section (`secure_ft.records.config.CardConfig`); a policy lists the ones a run must give
(``documentation.required_card_fields``) and pre-flight refuses a run without them. The
built-in demo data sets ship their own statements (``demo_data/NAME/CARD.yaml``, taken from
their PROVENANCE.md and the README's measured figures): with ``data.source: builtin:NAME``
every statement the config leaves null is the shipped one, so the README's first command
documents itself. A run saves the filled statements in its config.yaml, which the signed
verdict binds.

Human oversight is never typed into the config: it is the signed approvals of the run, listed
by `secure_ft.release.human_oversight` (a layer above: it reads signed envelopes), which also
assembles the report's whole ``technical_documentation`` section.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from secure_ft.records.config import RunConfig
from secure_ft.records.policy import CARD_FIELDS

#: file name of a built-in data set's shipped statements, beside its PROVENANCE.md
CARD_FILE = "CARD.yaml"


@lru_cache(maxsize=None)
def builtin_card(source: str) -> dict[str, Any]:
    """The shipped statements of a built-in data set (``builtin:cfpb``), or {} for any other source."""
    if not source.startswith("builtin:"):
        return {}
    path = Path(str(resources.files("secure_ft.records") / "demo_data" / source.removeprefix("builtin:") / CARD_FILE))
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {name: raw[name] for name in CARD_FIELDS if raw.get(name)}


def with_builtin_card(config: RunConfig) -> RunConfig:
    """`config` with every null ``card:`` statement filled from its built-in data set's shipped ones.

    Statements the config gives win; a data source that is not built in gets nothing (the
    statements of the demo data would be false of other data).
    """
    shipped = builtin_card(config.data.source)
    missing = {name: value for name, value in shipped.items() if getattr(config.card, name) is None}
    if not missing:
        return config
    return config.model_copy(update={"card": config.card.model_copy(update=missing)})


def missing_card_fields(config: RunConfig, required: list[str]) -> list[str]:
    """The required statements the config (with any built-in ones) does not give, in the policy's order."""
    card = with_builtin_card(config).card
    return [name for name in dict.fromkeys(required) if not getattr(card, name)]


def card_snippet(missing: list[str]) -> str:
    """A YAML ``card:`` section with one placeholder per missing statement, to paste into the run config.

    Placeholders are ``<...>``, which `secure_ft.records.config.CardConfig` refuses, so a pasted snippet
    documents nothing until someone writes the statements.
    """
    from secure_ft.records.config import CardConfig

    lines = ["card:"]
    for name in missing:
        field = CardConfig.model_fields[name]
        lines.append(f"  # {field.description}")
        if field.annotation == (list[str] | None):
            lines += [f"  {name}:", f"    - \"<{name.replace('_', ' ')[:-1]}>\""]
        else:
            lines.append(f"  {name}: \"<{name.replace('_', ' ')}>\"")
    return "\n".join(lines)
