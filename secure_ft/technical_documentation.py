"""Technical documentation of a run: the ``card:`` statements, what a policy requires of them, human oversight.

The statements (intended purpose, out-of-scope uses, known limitations, de-identification,
data provenance) are written by the people responsible for the model in the run config's
``card:`` section (`secure_ft.config.CardConfig`); a policy lists the ones a run must give
(``documentation.required_card_fields``) and pre-flight refuses a run without them. The
built-in demo data sets ship their own statements (``demo_data/NAME/CARD.yaml``, taken from
their PROVENANCE.md and the README's measured figures): with ``data.source: builtin:NAME``
every statement the config leaves null is the shipped one, so the README's first command
documents itself. A run saves the filled statements in its config.yaml, which the signed
verdict binds.

Human oversight is never typed into the config: it is the signed approvals of the run
(`secure_ft.approvals`), listed with their key fingerprints and comments, or "none yet".
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from secure_ft.config import RunConfig
from secure_ft.policy import CARD_FIELDS

#: file name of a built-in data set's shipped statements, beside its PROVENANCE.md
CARD_FILE = "CARD.yaml"
NO_APPROVALS = ("none yet: no signed approval of this run's verdict exists (`secure-ft approve RUN_DIR --key KEY "
                "--comment TEXT` records one; the release policy decides at export whether it counts)")


@lru_cache(maxsize=None)
def builtin_card(source: str) -> dict[str, Any]:
    """The shipped statements of a built-in data set (``builtin:cfpb``), or {} for any other source."""
    if not source.startswith("builtin:"):
        return {}
    path = Path(str(resources.files("secure_ft") / "demo_data" / source.removeprefix("builtin:") / CARD_FILE))
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

    Placeholders are ``<...>``, which `secure_ft.config.CardConfig` refuses, so a pasted snippet
    documents nothing until someone writes the statements.
    """
    from secure_ft.config import CardConfig

    lines = ["card:"]
    for name in missing:
        field = CardConfig.model_fields[name]
        lines.append(f"  # {field.description}")
        if field.annotation == (list[str] | None):
            lines += [f"  {name}:", f"    - \"<{name.replace('_', ' ')[:-1]}>\""]
        else:
            lines.append(f"  {name}: \"<{name.replace('_', ' ')}>\"")
    return "\n".join(lines)


def human_oversight(run_dir: str | Path) -> dict[str, Any]:
    """The signed approvals recorded in a run directory or bundle, as listed (whether they count is the release policy's).

    Each entry carries the approver's key fingerprint, decision, time and comment from the
    approval's signed statement; the signature itself is checked by `secure_ft.release_check`
    against the release policy's approvers at export, so this listing (``signatures_checked: false``)
    claims no more than what the files say; the bundle's model card lists the approvals that counted.
    """
    from secure_ft.approvals import read_approvals

    approvals = []
    for approval in read_approvals(Path(run_dir)):
        predicate = _unverified_predicate(approval.envelope)
        approver = predicate.get("approver") or {}
        approvals.append({"file": approval.file, "fingerprint": approver.get("public_key_sha256") or approval.keyid,
                          "decision": predicate.get("decision"), "time": predicate.get("time"),
                          "comment": predicate.get("comment"), "acknowledged": predicate.get("acknowledged") or []})
    return {"approvals": approvals, "statement": None if approvals else NO_APPROVALS,
            "signatures_checked": False}


def _unverified_predicate(envelope: dict) -> dict:
    """The predicate an approval envelope carries, read without checking its signature (listing only)."""
    try:
        statement = json.loads(base64.b64decode(envelope.get("payload") or "", validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError, AttributeError):
        return {}
    predicate = statement.get("predicate") if isinstance(statement, dict) else None
    return predicate if isinstance(predicate, dict) else {}


def documentation_section(config: RunConfig, run_dir: str | Path | None = None,
                          required: list[str] | None = None) -> dict[str, Any]:
    """The report's ``technical_documentation``: the card statements, the ones the policy requires, human oversight."""
    card = with_builtin_card(config).card
    shipped = builtin_card(config.data.source)
    statements = {name: getattr(card, name) for name in CARD_FIELDS}
    return {
        "statements": statements,
        "source": {name: ("config" if getattr(config.card, name) is not None else
                          f"shipped with {config.data.source}" if name in shipped else None) for name in CARD_FIELDS},
        "required_by_policy": list(required or []),
        "human_oversight": (human_oversight(run_dir) if run_dir is not None else
                            {"approvals": [], "statement": NO_APPROVALS, "signatures_checked": False}),
    }
