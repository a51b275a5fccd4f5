"""The federation's text front end: one spelling front end, built alike by the coordinator and every site.

With ``training.robustness.front_end: spelling`` every participant builds the front end itself
from public resources only — SymSpell's shipped English dictionary and the base tokenizer's
whole words (`secure_ft.text.spelling.SpellingFrontEnd.from_public_resources`) — so no site's data
shapes it and nothing about it has to travel. The build is deterministic (sorted
dictionary, order-free tie-breaks), so the same base checkpoint and settings give the same
front end everywhere; the coordinator sends its `front_end_sha256` with every message and a
site whose own build differs (another symspellpy dictionary, another tokenizer) refuses to
train rather than silently read different text. ``front_end_extra_words_from_training_data``
is refused for federated runs (`secure_ft.records.config`): it would need every site's words.

The coordinator saves the front end in the global model's folder (`federated.handoff`), so
audits, export and serving apply it exactly as after a central run.

Building the SymSpell index takes seconds, and a site is asked to train or evaluate every
round: the last front end built is kept for the life of the process.
"""

from __future__ import annotations

import hashlib
import json

from secure_ft.errors import ConfigError, ModelError
from secure_ft.records.config import RunConfig
from secure_ft.text.spelling import SpellingFrontEnd, tokenizer_words

_BUILT: dict[str, SpellingFrontEnd] = {}  # this process's last front end, by `_build_key`


def federation_front_end(config: RunConfig, tokenizer) -> SpellingFrontEnd | None:
    """The front end ``config`` asks for, built from public resources and `tokenizer` (None for ``none``).

    Raises
    ------
    ConfigError
        ``front_end_extra_words_from_training_data`` is set (the config normally refuses it first).
    """
    settings = config.training.robustness
    if settings.front_end == "none":
        return None
    if settings.front_end_extra_words_from_training_data:
        raise ConfigError("training.robustness.front_end_extra_words_from_training_data cannot be used in a federated "
                          "run (it would need every site's data at the coordinator); set it to false")
    key = _build_key(tokenizer, settings.front_end_max_edit_distance)
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = SpellingFrontEnd.from_public_resources(
            tokenizer, max_edit_distance=settings.front_end_max_edit_distance)
    return _BUILT[key]


def front_end_sha256(front_end: SpellingFrontEnd | None) -> str:
    """Identity of a front end: its saved settings and dictionary digest ('' for none)."""
    if front_end is None:
        return ""
    settings = {key: value for key, value in front_end.config().items() if key != "symspellpy_version"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def check_same_front_end(front_end: SpellingFrontEnd | None, announced: str) -> None:
    """Raise `ModelError` when this site's front end is not the one the coordinator announced."""
    if not announced:
        return  # a coordinator that announces none (no front end, or an older secure-ft)
    local = front_end_sha256(front_end)
    if local != announced:
        raise ModelError(
            f"this site's spelling front end has identity {local[:12] or 'none'}… but the coordinator's has "
            f"{announced[:12]}…: the front end is built from the symspellpy dictionary and the base tokenizer, so "
            "install the same symspellpy, base model and secure-ft version at every site")


def _build_key(tokenizer, max_edit_distance: int) -> str:
    words = "\n".join(tokenizer_words(tokenizer))
    return hashlib.sha256(f"{max_edit_distance}\n{words}".encode("utf-8")).hexdigest()
