"""Split one dataset into simulated sites: IID, by a group column, or by Dirichlet label skew.

A simulation stands in for several hospitals or banks that each hold their own rows. How the
rows are dealt out decides how hard federated training is:

``iid``
    Rows are shuffled and dealt into equal parts; every site looks like the whole.
``group``
    Each site is a population: all rows with the same value of a group column (for example
    the complainant's ``state``) go to the same site. With more values than sites, values
    are either assigned explicitly (``federated.site_groups``; ``"*"`` takes every value not
    listed elsewhere) or balanced greedily, largest group first, onto the smallest site.
``dirichlet``
    For every label, the share each site gets is drawn from Dirichlet(α): small α gives
    each site a few dominant labels (strong label skew), large α approaches IID.

Training and validation rows are split with the same rule (the same group assignment, the
same Dirichlet shares), so each site validates on rows like its own. The test split is
never partitioned: it stays with the audits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from secure_ft.errors import ConfigError, DataError
from secure_ft.records.config import FederatedConfig
from secure_ft.records.data import LABEL, DatasetSplits

log = logging.getLogger(__name__)

WILDCARD = "*"
_DIRICHLET_ATTEMPTS = 200


@dataclass
class SitePartition:
    """The rows one site holds: its training and validation frames (canonical columns)."""

    name: str
    train: pd.DataFrame
    validation: pd.DataFrame
    groups: list[str] | None = None  # the group values this site holds (partition: group)

    def label_counts(self, label_names: list[str]) -> dict[str, int]:
        counts = self.train[LABEL].value_counts()
        return {name: int(counts.get(index, 0)) for index, name in enumerate(label_names)}

    def fingerprint(self) -> str:
        """SHA-256 of the site's training rows (text and label), for its privacy ledger."""
        digest = hashlib.sha256()
        for text, label in zip(self.train["text"], self.train[LABEL]):
            digest.update(json.dumps([text, int(label)], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def summary(self, label_names: list[str]) -> dict:
        return {
            "name": self.name,
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "groups": self.groups,
            "label_counts": self.label_counts(label_names),
        }


def site_names(count: int) -> list[str]:
    return [f"site-{index + 1}" for index in range(count)]


def partition_sites(splits: DatasetSplits, config: FederatedConfig, seed: int, *,
                    quiet: bool = False) -> list[SitePartition]:
    """Deal the training and validation rows of `splits` into `config.num_sites` sites (logged unless quiet).

    Raises
    ------
    ConfigError
        The partition column is not a group column, or explicit site groups do not cover it.
    DataError
        A site would end up with fewer than `min_site_examples` training rows or no
        validation rows.
    """
    if config.partition == "iid":
        sites = _iid(splits, config.num_sites, seed)
    elif config.partition == "group":
        sites = _by_group(splits, config)
    else:
        sites = _dirichlet(splits, config, seed)
    _check_sizes(sites, config)
    for site in [] if quiet else sites:
        groups = f"; groups {', '.join(value or '(empty)' for value in site.groups)}" if site.groups else ""
        log.info("%s: %d training / %d validation rows%s; labels %s", site.name, len(site.train),
                 len(site.validation), groups,
                 {name: count for name, count in site.label_counts(splits.label_names).items() if count})
    return sites


def _iid(splits: DatasetSplits, count: int, seed: int) -> list[SitePartition]:
    rng = np.random.default_rng(seed)
    parts = []
    for frame in (splits.train, splits.validation):
        order = rng.permutation(len(frame))
        parts.append([frame.iloc[np.sort(chunk)].reset_index(drop=True) for chunk in np.array_split(order, count)])
    return [SitePartition(name, train, validation)
            for name, train, validation in zip(site_names(count), parts[0], parts[1])]


def _by_group(splits: DatasetSplits, config: FederatedConfig) -> list[SitePartition]:
    column = config.partition_column
    if column not in splits.group_columns:
        raise ConfigError(
            f"federated.partition_column: {column!r} is not one of data.group_columns "
            f"({', '.join(splits.group_columns) or 'none'}); add it there or choose another column"
        )
    values = pd.concat([splits.train[column], splits.validation[column]])
    train_counts = splits.train[column].value_counts()
    distinct = sorted(values.unique())
    if config.site_groups is not None:
        assignment = _explicit_assignment(config.site_groups, distinct, column)
    else:
        if len(distinct) < config.num_sites:
            raise ConfigError(
                f"federated.partition_column: {column!r} has {len(distinct)} distinct values "
                f"({', '.join(map(repr, distinct))}) but num_sites is {config.num_sites}; lower num_sites or "
                "choose a column with more values"
            )
        assignment = _balanced_assignment(distinct, train_counts, site_names(config.num_sites))
    sites = []
    for name in site_names(config.num_sites) if config.site_groups is None else list(config.site_groups):
        held = sorted(value for value, site in assignment.items() if site == name)
        sites.append(SitePartition(
            name,
            splits.train[splits.train[column].isin(held)].reset_index(drop=True),
            splits.validation[splits.validation[column].isin(held)].reset_index(drop=True),
            groups=held,
        ))
    return sites


def _explicit_assignment(site_groups: dict[str, list[str]], distinct: list[str], column: str) -> dict[str, str]:
    assignment: dict[str, str] = {}
    wildcard_site = None
    for site, listed in site_groups.items():
        for value in listed:
            if value == WILDCARD:
                if wildcard_site is not None:
                    raise ConfigError(f"federated.site_groups: {WILDCARD!r} appears for both {wildcard_site!r} and "
                                      f"{site!r}; only one site can take the remaining values")
                wildcard_site = site
                continue
            if value in assignment:
                raise ConfigError(f"federated.site_groups: value {value!r} is listed for both {assignment[value]!r} "
                                  f"and {site!r}; each value belongs to one site")
            assignment[value] = site
    unknown = sorted(set(assignment) - set(distinct))
    if unknown:
        log.warning("federated.site_groups: values %s do not occur in column %r", unknown, column)
    missing = [value for value in distinct if value not in assignment]
    if missing and wildcard_site is None:
        raise ConfigError(
            f"federated.site_groups: values {missing[:10]}{' …' if len(missing) > 10 else ''} of column {column!r} "
            f"are not assigned to any site; list them, or add {WILDCARD!r} to one site to give it the rest"
        )
    for value in missing:
        assignment[value] = wildcard_site
    return assignment


def _balanced_assignment(distinct: list[str], train_counts: pd.Series, names: list[str]) -> dict[str, str]:
    """Largest group first onto the site with the fewest rows so far (ties: the earlier site)."""
    loads = {name: 0 for name in names}
    assignment = {}
    for value in sorted(distinct, key=lambda v: (-int(train_counts.get(v, 0)), v)):
        site = min(names, key=lambda name: (loads[name], names.index(name)))
        assignment[value] = site
        loads[site] += int(train_counts.get(value, 0))
    return assignment


def _dirichlet(splits: DatasetSplits, config: FederatedConfig, seed: int) -> list[SitePartition]:
    rng = np.random.default_rng(seed)
    classes = len(splits.label_names)
    count = config.num_sites
    for _ in range(_DIRICHLET_ATTEMPTS):
        shares = rng.dirichlet(np.full(count, config.dirichlet_alpha), size=classes)  # (classes, sites)
        parts = [_deal_by_label(frame, shares, rng) for frame in (splits.train, splits.validation)]
        if min(len(part) for part in parts[0]) >= config.min_site_examples and min(len(part) for part in parts[1]) > 0:
            break
    else:
        raise DataError(
            f"federated.partition: dirichlet with α = {config.dirichlet_alpha:g} left some of the {count} sites with "
            f"fewer than {config.min_site_examples} training rows in {_DIRICHLET_ATTEMPTS} draws; raise "
            "dirichlet_alpha, lower num_sites or min_site_examples"
        )
    return [SitePartition(name, train, validation)
            for name, train, validation in zip(site_names(count), parts[0], parts[1])]


def _deal_by_label(frame: pd.DataFrame, shares: np.ndarray, rng: np.random.Generator) -> list[pd.DataFrame]:
    owners = np.empty(len(frame), dtype=int)
    labels = frame[LABEL].to_numpy()
    for label in range(shares.shape[0]):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(shares[label])[:-1] * len(rows)).round().astype(int)
        for site, chunk in enumerate(np.split(rows, cuts)):
            owners[chunk] = site
    return [frame[owners == site].reset_index(drop=True) for site in range(shares.shape[1])]


def _check_sizes(sites: list[SitePartition], config: FederatedConfig) -> None:
    for site in sites:
        if len(site.train) < config.min_site_examples:
            raise DataError(
                f"federated.partition: {site.name} would hold {len(site.train)} training rows, fewer than "
                f"min_site_examples = {config.min_site_examples}; lower num_sites, merge small groups with "
                "site_groups, or lower min_site_examples"
            )
        if len(site.validation) == 0:
            raise DataError(
                f"federated.partition: {site.name} would hold no validation rows (its groups are too small); "
                "lower num_sites or merge small groups with federated.site_groups"
            )
