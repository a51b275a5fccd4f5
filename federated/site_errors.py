"""What a failing site tells the coordinator: the rule it broke and counts, never its data.

A site's exception text is written for the site's operator: it names the data file's path,
the offending labels, row numbers, values. Flower sends a ClientApp's exception text to the
SuperLink, where it lands in the SuperLink's database and the coordinator's run ledger. So a
site never lets its own exception reach Flower: it logs the full detail (traceback included)
in its own log and ledger, and raises a `SiteFailure` whose text is built only from

- the site's name and the stage that failed (a fixed phrase),
- the rule: an error's ``public_rule`` when it declares one (`SiteDataRejected`), else the
  exception's class name (code, not data),
- counts an error declares in ``public_counts`` (numbers only),
- whether the site's odometer recorded a DP release this round (`NO_RELEASE` / `RELEASED`),
  so the coordinator can account for the round (`secure_ft.privacy.signed_history`).
"""

from __future__ import annotations

from typing import Mapping

from secure_ft.errors import DataError

NO_RELEASE = "no DP release this round"
RELEASED = "DP release recorded this round"


class SiteFailure(RuntimeError):
    """A site could not complete its part of a round; the message names the site, the rule and counts only."""


class SiteDataRejected(DataError):
    """The site's own file failed the run's checks; `public_rule` and `public_counts` may leave the site."""

    def __init__(self, message: str, rule: str, counts: Mapping[str, int]):
        super().__init__(message)
        self.public_rule = rule
        self.public_counts = {str(key): int(value) for key, value in counts.items()}


def public_failure(site: str, stage: str, error: BaseException, released: bool | None = None) -> SiteFailure:
    """The `SiteFailure` the coordinator may see for `error` (whose full text stays at the site)."""
    rule = getattr(error, "public_rule", None) or type(error).__name__
    counts = getattr(error, "public_counts", None) or {}
    text = f"site {site}: {stage} failed: {rule}"
    if counts:
        text += " (" + ", ".join(f"{key} {int(value)}" for key, value in counts.items()) + ")"
    if released is not None:
        text += f"; {RELEASED if released else NO_RELEASE}"
    return SiteFailure(text + "; the details are in the site's own log")
