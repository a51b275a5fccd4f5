"""Simulated sites: IID, by group column, Dirichlet label skew; sizes, determinism, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from federated.partition import partition_sites
from secure_ft.errors import ConfigError, DataError
from secure_ft.records.config import DataConfig, FederatedConfig
from secure_ft.records.data import load_splits


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    rng = np.random.default_rng(0)
    regions = ["north", "south", "east", "west", "centre"]
    weights = [0.35, 0.25, 0.2, 0.15, 0.05]
    labels = ["cards", "loans", "reports"]
    rows = [{"text": f"complaint {index} about {labels[index % 3]}", "product": labels[index % 3],
             "region": str(rng.choice(regions, p=weights))} for index in range(600)]
    path = tmp_path_factory.mktemp("partition") / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return load_splits(DataConfig(source=str(path), label_column="product", group_columns=["region"]), seed=7)


def row_ids(sites, part="train"):
    return [set(getattr(site, part)["row"]) for site in sites]


def test_iid_sites_are_disjoint_equal_and_cover_every_row(splits):
    sites = partition_sites(splits, FederatedConfig(num_sites=3, partition="iid"), seed=1)
    train = row_ids(sites)
    assert [site.name for site in sites] == ["site-1", "site-2", "site-3"]
    assert set.union(*train) == set(splits.train["row"]) and sum(map(len, train)) == len(splits.train)
    assert max(map(len, train)) - min(map(len, train)) <= 1
    assert set.union(*row_ids(sites, "validation")) == set(splits.validation["row"])
    again = partition_sites(splits, FederatedConfig(num_sites=3, partition="iid"), seed=1)
    assert row_ids(again) == train  # deterministic for a seed
    assert row_ids(partition_sites(splits, FederatedConfig(num_sites=3, partition="iid"), seed=2)) != train


def test_group_partition_keeps_each_population_on_one_site_and_balances_sizes(splits):
    sites = partition_sites(splits, FederatedConfig(num_sites=3, partition="group", partition_column="region"), 1)
    held = [set(site.groups) for site in sites]
    assert set.union(*held) == set(splits.train["region"]) and sum(map(len, held)) == 5
    for site in sites:
        assert set(site.train["region"]) == set(site.groups)
        assert set(site.validation["region"]) <= set(site.groups)
    sizes = [len(site.train) for site in sites]
    assert max(sizes) < 0.5 * len(splits.train)  # greedy balancing: no site takes the lion's share
    summary = sites[0].summary(splits.label_names)
    assert summary["train_rows"] == len(sites[0].train) and set(summary["label_counts"]) == set(splits.label_names)


def test_explicit_site_groups_with_a_wildcard(splits):
    config = FederatedConfig(num_sites=2, partition="group", partition_column="region",
                             site_groups={"coast": ["east", "west"], "inland": ["*"]})
    coast, inland = partition_sites(splits, config, seed=0)
    assert (coast.name, inland.name) == ("coast", "inland")
    assert coast.groups == ["east", "west"] and inland.groups == ["centre", "north", "south"]


@pytest.mark.parametrize("federated, error, words", [
    (dict(num_sites=2, partition="group", partition_column="zip"), ConfigError, "not one of data.group_columns"),
    (dict(num_sites=2, partition="group", partition_column="region", site_groups={"a": ["north"], "b": ["south"]}),
     ConfigError, "not assigned to any site"),
    (dict(num_sites=2, partition="group", partition_column="region",
          site_groups={"a": ["north", "*"], "b": ["north"]}), ConfigError, "listed for both"),
    (dict(num_sites=6, partition="group", partition_column="region", min_train_sites=2), ConfigError,
     "5 distinct values"),
    (dict(num_sites=2, partition="iid", min_site_examples=1000), DataError, "min_site_examples"),
])
def test_bad_partitions_say_what_to_change(splits, federated, error, words):
    with pytest.raises(error, match=words):
        partition_sites(splits, FederatedConfig(**federated), seed=0)


def test_dirichlet_skew_grows_as_alpha_shrinks(splits):
    def skew(alpha):
        sites = partition_sites(splits, FederatedConfig(num_sites=3, partition="dirichlet", dirichlet_alpha=alpha,
                                                        min_site_examples=5), seed=3)
        assert sum(len(site.train) for site in sites) == len(splits.train)
        shares = [site.train["label"].value_counts(normalize=True).max() for site in sites]
        return float(np.mean(shares))

    assert skew(0.2) > skew(100.0) + 0.15
    assert skew(100.0) < 0.45  # near IID: three balanced labels
