"""`secure-ft policy show|init|diff [P]`: every policy key with its value, default and meaning.

``show`` lists every key of a policy (default: the shipped regulated-use policy) with the value
that applies, whether the file sets it or the default applies, and what it means; ``init``
writes a commented policy file holding every key; ``diff`` compares a policy with a shipped
one (``--against``, default the shipped default) key by key, omitted keys included. Omitted keys
whose default changes judgement are warned about on load (`secure_ft.records.policy.omitted_key_warnings`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from secure_ft.errors import PolicyError


def _shipped(name_or_path: str | None) -> Path:
    """A policy path: a file, or the name of a shipped policy (``strict``, ``research.yaml``)."""
    from secure_ft.records.policy import default_policy_path

    if name_or_path is None:
        return default_policy_path()
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    shipped = default_policy_path().with_name(Path(name_or_path).stem + ".yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(path.stem for path in default_policy_path().parent.glob("*.yaml")))
    raise PolicyError(f"{name_or_path}: no such policy file or shipped policy (shipped: {names})")


def policy_keys(path: Path) -> list[dict[str, Any]]:
    """Every key of the policy at `path`: dotted key, value, default, whether the file sets it, meaning."""
    from secure_ft.records.policy import Policy, load_policy

    policy, _ = load_policy(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rows = []
    for name, field in Policy.model_fields.items():
        value = getattr(policy, name)
        if isinstance(value, BaseModel):
            given = raw.get(name) if isinstance(raw.get(name), dict) else {}
            for key, sub in type(value).model_fields.items():
                rows.append({"key": f"{name}.{key}", "value": _plain(getattr(value, key)),
                             "default": _plain(sub.get_default(call_default_factory=True)), "set": key in given,
                             "meaning": sub.description or _meaning(key)})
        else:
            rows.append({"key": name, "value": _plain(value), "default": _plain(field.get_default(call_default_factory=True)),
                         "set": name in raw, "meaning": field.description or _meaning(name)})
    return rows


def _plain(value: Any) -> Any:
    """JSON-plain form of a policy value (nested models, such as a recipe's threat model, as dicts)."""
    return json.loads(json.dumps(value, default=lambda item: item.model_dump(mode="json")))


# words for the policy fields declared without a description
MEANINGS = {
    "name": "the policy's name, recorded in the verdict",
    "required_audits": "audits that must run and pass; others never block export",
    "max_delta": "largest δ of the DP guarantee (central, every site, the aggregate)",
    "max_tpr_at_1pct_fpr": "membership attack's true-positive rate at 1% false positives (strongest attack)",
    "max_tpr_at_0_1pct_fpr": "membership attack's true-positive rate at 0.1% false positives (strongest attack)",
    "max_demographic_parity_difference": "largest gap in selection rate between groups of a sensitive column",
    "min_demographic_parity_ratio": "smallest ratio of the lowest to the highest group selection rate",
    "max_equalized_odds_difference": "largest gap in TPR or FPR between groups of a sensitive column",
    "min_equalized_odds_ratio": "smallest ratio of the lowest to the highest group TPR or FPR",
    "max_equal_opportunity_difference": "largest gap in TPR (recall) between groups of a sensitive column",
    "min_worst_group_accuracy": "accuracy of the worst group of every sensitive column must reach this",
}


def _meaning(key: str) -> str:
    """Words for fields declared without a description, from what the key checks."""
    if key in MEANINGS:
        return MEANINGS[key]
    if key.startswith("max_"):
        return f"largest allowed {key[4:].replace('_', ' ')}"
    if key.startswith("min_"):
        return f"smallest allowed {key[4:].replace('_', ' ')}"
    return key.replace("_", " ")


def _shown(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "null (no check)"
    if value == {}:
        return "{} (no check)"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def cmd_policy_show(args: argparse.Namespace) -> int:
    from secure_ft.records.policy import load_policy

    path = _shipped(args.policy)
    rows = policy_keys(path)
    if args.json:
        print(json.dumps({"policy": str(path), "keys": rows}, indent=2, ensure_ascii=False))
        return 0
    print(f"# {path}")
    for row in rows:
        source = f"set; default {_shown(row['default'])}" if row["set"] else "not set: the default applies"
        print(f"{row['key']}: {_shown(row['value'])}  [{source}]  — {row['meaning']}")
    for warning in load_policy(path)[0].warnings:
        print(f"warning: {warning}")
    return 0


def cmd_policy_init(args: argparse.Namespace) -> int:
    from secure_ft.errors import ConfigError
    from secure_ft.records.atomic_files import atomic_write_text

    target = Path(args.file)
    if target.exists() and not args.force:
        raise ConfigError(f"{target}: already exists; pass --force to overwrite it")
    source = _shipped(args.source)
    lines = [f"# secure-ft policy: every key, starting from {source.name}; each comment says what the key checks",
             "# and its built-in default (the value used when a key is left out)."]
    section = None
    for row in policy_keys(source):
        head, _, key = row["key"].rpartition(".")
        if head and head != section:
            section = head
            lines += ["", f"{head}:"]
        pad = "  " if head else ""
        lines.append(f"{pad}# {row['meaning']} (default: {_shown(row['default'])})")
        dumped = yaml.safe_dump({key or row["key"]: row["value"]}, default_flow_style=True, width=10_000).strip()
        lines.append(pad + dumped[1:-1])
    atomic_write_text(target, "\n".join(lines) + "\n")
    print(f"wrote {target}")
    return 0


def cmd_policy_diff(args: argparse.Namespace) -> int:
    path, against = _shipped(args.policy), _shipped(args.against)
    mine = {row["key"]: row for row in policy_keys(path)}
    theirs = {row["key"]: row for row in policy_keys(against)}
    differences = [key for key in mine if key != "name" and mine[key]["value"] != theirs[key]["value"]]
    print(f"# {path} against {against}")
    if not differences:
        print("no difference in any key (names aside)")
    for key in differences:
        how = "" if mine[key]["set"] else " (omitted: default)"
        print(f"{key}: {_shown(mine[key]['value'])}{how}  vs  {_shown(theirs[key]['value'])}  — {mine[key]['meaning']}")
    return 0


def register(subparsers) -> None:
    policy = subparsers.add_parser("policy", help="show, write or compare export policies (every key, default, meaning)",
                                   description=__doc__.splitlines()[0])
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="every key of a policy with its value, default and meaning")
    show.add_argument("policy", nargs="?", metavar="P", help="policy file or shipped name (default: regulated-default)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=cmd_policy_show)
    init = actions.add_parser("init", help="write a commented policy file holding every key")
    init.add_argument("file", nargs="?", default="policy.yaml")
    init.add_argument("--from", dest="source", metavar="P", help="start from this policy (default: regulated-default)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=cmd_policy_init)
    diff = actions.add_parser("diff", help="keys where a policy differs from a shipped one (omitted keys included)")
    diff.add_argument("policy", nargs="?", metavar="P", help="policy file or shipped name (default: regulated-default)")
    diff.add_argument("--against", metavar="P", help="policy to compare with (default: the shipped regulated-default)")
    diff.set_defaults(handler=cmd_policy_diff)
