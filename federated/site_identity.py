"""The coordinator's side of site identity and site accounting: names from keys, signed histories kept.

In a deployment the SuperLink authenticates every SuperNode by its registered key, and Flower
tells the ServerApp which node sent a reply. `SiteBook` turns that into the site's name by the
registry entry of that node's key (``sites.json``, path in ``SECURE_FT_SITE_REGISTRY``, set
by ``secure-ft deploy superlink``), never by the name the reply declares: a reply whose
declared name differs is rejected. It also keeps, per site,

- the rounds the coordinator sent it training in (``rounds_sent``),
- the rounds it failed in stating that it released nothing (`federated.site_errors.NO_RELEASE`),
- its latest privacy statement (its whole released history), after checking the signature
  against the registered key (deployments) — an unsigned or forged statement is refused,

which `federated.handoff` writes into ``privacy.json`` for ``secure-ft privacy`` and the gate
to recompute and to compare (`secure_ft.privacy.signed_history.unaccounted_rounds`).

In a simulation there is no registry: sites are named by their replies and their statements
travel unsigned.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from federated import protocol
from federated.site_errors import NO_RELEASE
from secure_ft.errors import PrivacyError
from secure_ft.privacy.signed_history import open_statement
from secure_ft.records.run_ledger import line_digest

log = logging.getLogger(__name__)

REGISTRY_ENV = "SECURE_FT_SITE_REGISTRY"  # the same name as secure_ft.deploy.site_registry.REGISTRY_ENV


def federation_run_key(run_dir: Path) -> str:
    """A run's stable key for the sites' odometers: the digest of its ledger's first line (kept by a resume)."""
    with open(Path(run_dir) / "ledger.jsonl", "rb") as ledger:
        return line_digest(ledger.readline())[:32]


def load_registry(path: str | os.PathLike | None) -> dict[str, dict[str, Any]] | None:
    """sites.json as the coordinator reads it, or None (no registry: a simulation)."""
    if not path:
        return None
    try:
        registry = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise PrivacyError(f"{path}: the site registry is unreadable ({error})") from None
    return registry if isinstance(registry, dict) else {}


class SiteBook:
    """Names, rounds sent and signed statements of the sites, as the coordinator sees them."""

    def __init__(self, registry_file: str | os.PathLike | None = None):
        self.registry_file = registry_file if registry_file is not None else os.environ.get(REGISTRY_ENV)
        self.deployed_registry = bool(self.registry_file)
        self.declared: dict[int, str] = {}
        self.rounds_sent: dict[int, list[int]] = defaultdict(list)  # by node id: names are resolved at the end
        self.failed_without_release: dict[int, list[int]] = defaultdict(list)
        self.sent_messages: dict[int, list] = {}  # per round: the train messages, to name unreachable nodes
        self.statements: dict[str, dict[str, Any]] = {}
        self.statement_problems: dict[str, str] = {}

    # -- names -----------------------------------------------------------------------------

    def registered(self, node_id: int) -> tuple[str, dict[str, Any]] | None:
        registry = load_registry(self.registry_file) or {}  # re-read: sites may be registered mid-run
        for name, entry in registry.items():
            if entry.get("node_id") is not None and int(entry["node_id"]) == int(node_id):
                return name, entry
        return None

    def name_of(self, node_id: int) -> str:
        if self.deployed_registry:
            found = self.registered(node_id)
            return found[0] if found else f"unregistered node {node_id}"
        return self.declared.get(node_id, f"node {node_id}")

    def key_of(self, node_id: int) -> str | None:
        found = self.registered(node_id) if self.deployed_registry else None
        return found[1].get("public_key_sha256") if found else None

    def identity_problem(self, node_id: int, declared: str | None) -> str | None:
        """Why a reply cannot be taken as the site it says it is (None: it can)."""
        if declared:
            self.declared[node_id] = declared
        if not self.deployed_registry:
            return None
        found = self.registered(node_id)
        if found is None:
            return f"node {node_id} is not in the site registry"
        if declared and declared != found[0]:
            return f"the reply calls itself {declared!r} but its key is registered as {found[0]!r}"
        return None

    # -- rounds and statements -------------------------------------------------------------

    def sent_training(self, server_round: int, node_ids: list[int], messages: list | None = None) -> None:
        for node in node_ids:
            self.rounds_sent[int(node)].append(int(server_round))
        self.sent_messages[int(server_round)] = list(messages or [])

    def origin(self, server_round: int, reply) -> int:
        """The node a reply is about: the SuperLink answers for an unreachable node in its own name."""
        wanted = reply.metadata.reply_to_message_id
        for message in self.sent_messages.get(int(server_round), []):
            if wanted and message.metadata.message_id == wanted:  # Flower sets the id when it sends
                return int(message.metadata.dst_node_id)
        return int(reply.metadata.src_node_id)

    def failed(self, server_round: int, node_id: int, reason: str | None) -> None:
        if reason and NO_RELEASE in reason:
            self.failed_without_release[int(node_id)].append(int(server_round))

    def receive_statement(self, server_round: int, node_id: int, text: object) -> str | None:
        """Keep a site's statement after checking it; returns the problem when it is refused."""
        site = self.name_of(node_id)
        if text is None:
            return None
        try:
            sealed = json.loads(str(text))
            expected_key = self.key_of(node_id) if self.deployed_registry else None
            payload = open_statement(sealed, require_signature=self.deployed_registry, expected_key_sha256=expected_key,
                                     expected_site=site)
        except (ValueError, PrivacyError) as error:
            problem = f"privacy statement refused: {error}"
            self.statement_problems[site] = problem
            log.warning("round %d: %s: %s", server_round, site, problem)
            return problem
        previous = self.statements.get(site)
        if previous is None or len(payload["releases"]) >= len(previous["payload_releases"]):  # histories only grow
            self.statements[site] = {"sealed": sealed, "payload_releases": payload["releases"], "round": server_round}
        return None

    def records(self) -> dict[str, dict[str, Any]]:
        """Per site: rounds sent, rounds failed without release, the latest sealed statement, the key."""
        sent: dict[str, set[int]] = defaultdict(set)
        quiet: dict[str, set[int]] = defaultdict(set)
        keys: dict[str, str | None] = {}
        for node, rounds in self.rounds_sent.items():
            sent[self.name_of(node)].update(rounds)
            keys[self.name_of(node)] = self.key_of(node)
        for node, rounds in self.failed_without_release.items():
            quiet[self.name_of(node)].update(rounds)
        names = set(sent) | set(self.statements) | set(quiet)
        return {name: {"rounds_sent": sorted(sent.get(name, ())),
                       "rounds_failed_without_release": sorted(quiet.get(name, ())),
                       "statement": (self.statements.get(name) or {}).get("sealed"),
                       "statement_problem": self.statement_problems.get(name),
                       "key_sha256": keys.get(name)}
                for name in sorted(names)}


    # -- checkpoints (a resumed run keeps what it knew of its sites) ---------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"declared": {str(node): name for node, name in self.declared.items()},
                "rounds_sent": {str(node): rounds for node, rounds in self.rounds_sent.items()},
                "failed_without_release": {str(node): rounds for node, rounds in self.failed_without_release.items()},
                "statements": self.statements, "statement_problems": self.statement_problems}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.declared = {int(node): str(name) for node, name in state.get("declared", {}).items()}
        self.rounds_sent = defaultdict(list, {int(node): list(rounds) for node, rounds in state.get("rounds_sent", {}).items()})
        self.failed_without_release = defaultdict(list, {int(node): list(rounds) for node, rounds
                                                         in state.get("failed_without_release", {}).items()})
        self.statements = dict(state.get("statements", {}))
        self.statement_problems = dict(state.get("statement_problems", {}))


def declared_name(content) -> str | None:
    record = content.config_records.get(protocol.SITE)
    value = record.get(protocol.SITE_NAME) if record is not None else None
    return str(value) if isinstance(value, str) else None


def statement_text(content) -> object:
    record = content.config_records.get(protocol.SITE)
    return record.get(protocol.SITE_STATEMENT) if record is not None else None
