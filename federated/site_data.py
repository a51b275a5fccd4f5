"""Which rows a site trains on: its own file (deployment) or its partition (simulation).

In a deployment every SuperNode is started with ``--node-config "data-path=… site-name=…"``
and reads only that file. The file is validated like a central run's data (same column
mapping, same checks, errors naming the file and rows); its labels must belong to the
run's label set, which the server sends with every message, so that label *indices* agree
across sites. The site keeps a stratified validation share of its rows for its own
model selection and for federated evaluation.

In a simulation Flower gives each virtual SuperNode a ``partition-id``; the site then
re-creates the run's deterministic partition (`federated.partition`) and takes its part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from sklearn.model_selection import train_test_split

from federated import protocol
from federated.partition import SitePartition, partition_sites
from secure_ft.errors import ConfigError, DataError
from secure_ft.records.config import RunConfig
from secure_ft.records.data import LABEL, load_splits, read_table, validate
from secure_ft.records.run_directory import RunDirectory
from federated.site_errors import SiteDataRejected

log = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("~/.secure-ft/sites")


@dataclass
class Site:
    """One site as its ClientApp sees it."""

    name: str
    data: SitePartition
    state_dir: Path  # the site's own privacy ledger, privacy.json and site ledger
    deployed: bool


def resolve_site(node_config: Mapping[str, object], config: RunConfig, labels: list[str], run_dir: str = "",
                 run_id: int = 0) -> Site:
    """The site this SuperNode stands for, from its node config.

    A deployed site keeps its records in ``<state-dir>/run-<Flower run id>``; a simulated
    one in ``<run_dir>/sites/<name>`` beside the run it belongs to.

    Raises
    ------
    ConfigError
        The node config names neither a data file nor a simulation partition, or the
        simulation's partition count disagrees with `federated.num_sites`.
    """
    if protocol.DATA_PATH in node_config:
        path = Path(str(node_config[protocol.DATA_PATH])).expanduser()
        name = str(node_config.get(protocol.SITE_NAME_KEY) or path.stem)
        root = Path(str(node_config.get(protocol.STATE_DIR) or DEFAULT_STATE_ROOT / name)).expanduser()
        return Site(name, load_site_file(path, config, labels, name), root / f"run-{run_id}", deployed=True)
    if protocol.PARTITION_ID in node_config:
        index = int(node_config[protocol.PARTITION_ID])
        total = int(node_config.get(protocol.NUM_PARTITIONS, config.federated.num_sites))
        if total != config.federated.num_sites:
            raise ConfigError(f"the simulation runs {total} SuperNodes but federated.num_sites is "
                              f"{config.federated.num_sites}; start it with as many SuperNodes as sites")
        partition = simulated_partition(config, labels, index)
        root = Path(run_dir) if run_dir else DEFAULT_STATE_ROOT.expanduser()
        return Site(partition.name, partition, RunDirectory(root).site(partition.name).path, deployed=False)
    raise ConfigError(
        "this SuperNode has no data: start it with --node-config "
        "'data-path=\"/path/to/site.csv\" site-name=\"site-a\"' (see deploy/README.md)"
    )


_PARTITIONS: dict[str, list[SitePartition]] = {}  # per process: the partition of a config, computed once


def simulated_partition(config: RunConfig, labels: list[str], index: int) -> SitePartition:
    """Partition `index` of the run's data, split exactly as the server split it.

    The split is recomputed from the data as configured and must find the label set the
    server found (`labels`), so that label indices agree.
    """
    key = config.model_dump_json(include={"seed", "data", "federated"})
    if key not in _PARTITIONS:
        splits = load_splits(config.data, config.seed)
        if splits.label_names != list(labels):
            raise ConfigError(f"the site finds labels {splits.label_names} in {config.data.source} but the server "
                              f"found {labels}; server and sites must read the same data")
        _PARTITIONS.clear()
        _PARTITIONS[key] = partition_sites(splits, config.federated, config.seed, quiet=True)
    partitions = _PARTITIONS[key]
    if not 0 <= index < len(partitions):
        raise ConfigError(f"partition-id {index} is outside the {len(partitions)} simulated sites")
    return partitions[index]


def load_site_file(path: Path, config: RunConfig, labels: list[str], name: str) -> SitePartition:
    """A site's own labelled file, checked against the run's label set and split train/validation."""
    if not path.is_file():
        raise SiteDataRejected(f"{path}: the site's data file (node config data-path) does not exist",
                               "the site's data file does not exist", {})
    site_config = config.data.model_copy(update={
        "source": str(path), "group_columns": [], "derived_group_columns": [], "labels": list(labels),
        "min_class_count": 3, "small_classes": "drop", "max_rows": None,
    })
    try:
        raw, where = read_table(site_config.source, site_config.format, site_config.hf_split)
    except DataError as error:
        raise SiteDataRejected(f"site {name}: {error}", "the site's data file cannot be read", {}) from None
    try:
        frame, _, dropped = validate(raw, site_config, where)
    except DataError as error:  # the site's own file: name the site, the file and the run's labels
        raise SiteDataRejected(
            f"site {name}: {error} (the run's label set, data.labels: {list(labels)}; the file must "
            f"have columns {config.data.text_column!r} and {config.data.label_column!r})",
            "the site's data failed the run's checks", data_counts(raw, config, labels)) from None
    index = {label: position for position, label in enumerate(labels)}
    frame[LABEL] = frame["label_name"].map(index).astype(int)  # the run's numbering, not this file's
    fraction = config.data.split.validation_fraction
    counts = frame[LABEL].value_counts()
    stratify = frame[LABEL] if counts.min() >= 2 and len(counts) * 2 <= len(frame) * fraction else None
    try:
        train, validation = train_test_split(frame, test_size=fraction, stratify=stratify,
                                             random_state=config.seed)
    except ValueError as error:
        raise SiteDataRejected(f"{where}: cannot split the site's rows into training and validation: {error}",
                               "the site's rows cannot be split into training and validation",
                               {"rows": len(frame)}) from None
    if len(train) < config.federated.min_site_examples:
        raise SiteDataRejected(
            f"{where}: the site has {len(train)} training rows after holding out validation, fewer "
            f"than federated.min_site_examples = {config.federated.min_site_examples}",
            "fewer training rows than federated.min_site_examples",
            {"training rows": len(train), "min_site_examples": config.federated.min_site_examples})
    log.info("site %s: %s → %d training / %d validation rows; labels %s%s", name, where, len(train),
             len(validation), frame["label_name"].value_counts().to_dict(),
             f"; dropped classes with fewer than 3 rows: {dropped}" if dropped else "")
    return SitePartition(name, train.sort_values("row").reset_index(drop=True),
                         validation.sort_values("row").reset_index(drop=True))


def data_counts(raw, config: RunConfig, labels: list[str]) -> dict[str, int]:
    """Counts that describe why a site's file fails, with no value, label, row number or path in them."""
    counts = {"rows": int(len(raw))}
    columns = (config.data.text_column, config.data.label_column)
    counts["missing required columns"] = sum(column not in raw.columns for column in columns)
    if config.data.label_column in raw.columns:
        values = raw[config.data.label_column]
        present = values.notna()
        outside = present & ~values.astype(str).str.strip().isin(set(labels))
        counts["label values outside data.labels"] = int(values[outside].astype(str).nunique())
        counts["rows with such labels"] = int(outside.sum())
        counts["rows without a label"] = int((~present).sum())
    if config.data.text_column in raw.columns:
        texts = raw[config.data.text_column]
        counts["rows without text"] = int((texts.isna() | (texts.astype(str).str.strip() == "")).sum())
    return counts
