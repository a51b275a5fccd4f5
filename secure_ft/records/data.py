"""Data: load a labelled text set, validate it, split it, fingerprint it.

Sources are CSV / TSV / JSONL / Parquet files, a Hugging Face `datasets` name (for users
with a network), or a bundled demo set (`builtin:cfpb`, `builtin:mtsamples`). The user's
columns map onto three roles: the text, the label, and zero or more sensitive group columns
that audits read but the model never sees.

Every problem with the rows (missing column, empty text, bad bytes, missing or undeclared
labels, classes too small to split) is a :class:`~secure_ft.errors.DataError` naming the
file, the column and the first offending rows.

The split is stratified and deterministic given the seed; the fingerprint is the SHA-256 of
the canonical rows and the column mapping, so two runs on the same data say so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from secure_ft.errors import DataError
from secure_ft.records.config import DataConfig

log = logging.getLogger(__name__)

TEXT, LABEL = "text", "label"
_BUILTIN_FILES = {
    "builtin:cfpb": "cfpb/cfpb_narratives.csv",
    "builtin:mtsamples": "mtsamples/mtsamples_specialties.csv.gz",
}
_SHOWN_ROWS = 5


@dataclass
class DatasetSplits:
    """Validated, split data. Each frame has `text`, `label` (int index into `label_names`),
    `row` (the row number in the source, 1-based after the header) and the group columns."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_names: list[str]
    group_columns: list[str]
    derived_group_columns: list[str]
    fingerprint: str
    source: str
    dropped_classes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        counts = {name: len(frame) for name, frame in self.items()}
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "rows": counts,
            "labels": self.label_names,
            "group_columns": self.group_columns,
            "derived_group_columns": self.derived_group_columns,
            "dropped_classes": self.dropped_classes,
            "majority_baseline_accuracy": self.majority_baseline(),
        }

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def majority_baseline(self, split: str = "validation") -> float:
        """Accuracy of always predicting the training set's most frequent class."""
        majority = int(self.train[LABEL].mode().iloc[0])
        frame = dict(self.items())[split]
        return float((frame[LABEL] == majority).mean()) if len(frame) else 0.0


def builtin_path(name: str) -> Path:
    if name not in _BUILTIN_FILES:
        raise DataError(f"unknown built-in dataset {name!r}; choose one of {', '.join(_BUILTIN_FILES)}")
    return Path(str(resources.files("secure_ft.records") / "demo_data" / _BUILTIN_FILES[name]))


def read_table(source: str, fmt: str = "auto", hf_split: str = "train") -> tuple[pd.DataFrame, str]:
    """Read the raw table; returns it with a display name of where it came from."""
    if source.startswith("builtin:"):
        path = builtin_path(source)
        return _read_file(path, "csv"), source
    path = Path(source)
    if fmt == "hf" or (fmt == "auto" and not path.exists() and not path.suffix):
        return _read_hub(source, hf_split), f"{source} [{hf_split}]"
    if not path.is_file():
        raise DataError(f"{source}: data file not found (give a CSV, TSV, JSONL or Parquet file, or a datasets name)")
    return _read_file(path, fmt), str(path)


def _detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip", ".xz")]
    ext = suffixes[-1] if suffixes else ""
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
    if ext not in formats:
        raise DataError(f"{path}: cannot tell the format from the extension {ext!r}; set data.format")
    return formats[ext]


def _read_file(path: Path, fmt: str) -> pd.DataFrame:
    fmt = _detect_format(path) if fmt == "auto" else fmt
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                               encoding="utf-8", quoting=3 if fmt == "tsv" else 0)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        if fmt == "parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError as error:
        line = _first_bad_utf8_line(path)
        where = f" at line {line}" if line else ""
        raise DataError(f"{path}: not UTF-8{where} ({error.reason}); re-encode the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        raise DataError(f"{path}: cannot be read as {fmt}: {error}") from None
    raise DataError(f"{path}: unsupported format {fmt!r}")


def _first_bad_utf8_line(path: Path) -> int | None:
    if path.suffix in (".gz", ".bz2", ".xz", ".zip", ".parquet"):
        return None
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _read_hub(name: str, split: str) -> pd.DataFrame:
    try:
        import datasets

        return datasets.load_dataset(name, split=split).to_pandas()
    except Exception as error:  # network, unknown name, missing split: one message
        raise DataError(f"{name}: could not load the `datasets` hub dataset (split {split!r}): {error}") from None


def validate(frame: pd.DataFrame, config: DataConfig, where: str,
             keep_declared_labels: bool = False) -> tuple[pd.DataFrame, list[str], dict[str, int]]:
    """Check the rows and return the canonical frame, the label names and dropped classes.

    With `keep_declared_labels` (a deployed federation's coordinator) the label set is exactly
    ``data.labels``: rows of a class too small to split are still left out, but the class keeps
    its place in the numbering, because the sites train on it.
    """
    wanted = [config.text_column, config.label_column, *config.group_columns]
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(map(repr, missing))}; the file has "
            f"{', '.join(map(repr, frame.columns))}. Set data.text_column / label_column / group_columns"
        )
    if len(frame) == 0:
        raise DataError(f"{where}: the file has no rows")
    rows = pd.Series(np.arange(2, len(frame) + 2), index=frame.index)  # line numbers after the header

    text = frame[config.text_column]
    not_string = text.map(lambda value: not isinstance(value, str))
    _fail_rows(where, rows[not_string & text.notna()], f"column {config.text_column!r} holds non-text values")
    text = text.where(~not_string, None)
    blank = text.isna() | text.fillna("").str.strip().eq("")
    _fail_rows(where, rows[blank], f"empty or whitespace-only text in column {config.text_column!r}; remove or fill those rows")
    replacement = text.str.contains("\ufffd", regex=False, na=False)
    _fail_rows(where, rows[replacement], "text holds U+FFFD replacement characters (bytes that were not valid UTF-8); fix the encoding")

    labels = frame[config.label_column]
    label_text = labels.map(lambda value: "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip())
    _fail_rows(where, rows[label_text.eq("")], f"missing (NaN / empty) label in column {config.label_column!r}")
    if config.labels is not None:
        declared = set(config.labels)
        _fail_rows(where, rows[~label_text.isin(declared)],
                   f"label not in the declared set {sorted(declared)} (data.labels)", values=label_text)

    canonical = pd.DataFrame({"row": rows.values, TEXT: text.values, "label_name": label_text.values})
    for column in config.group_columns:
        canonical[column] = frame[column].map(lambda value: "" if value is None else str(value)).values

    counts = canonical["label_name"].value_counts()
    small = counts[counts < config.min_class_count]
    dropped: dict[str, int] = {}
    if len(small):
        if config.small_classes == "error":
            listed = ", ".join(f"{name!r} ({count} rows)" for name, count in small.items())
            raise DataError(
                f"{where}: classes too small to split (< {config.min_class_count} rows): {listed}; "
                "add rows, merge classes, or set data.small_classes: drop"
            )
        dropped = {str(name): int(count) for name, count in small.items()}
        log.warning("%s: dropping classes too small to split: %s", where, dropped)
        canonical = canonical[~canonical["label_name"].isin(small.index)].reset_index(drop=True)
    label_names = list(config.labels) if config.labels is not None else sorted(canonical["label_name"].unique())
    if not (keep_declared_labels and config.labels is not None):
        label_names = [name for name in label_names if name not in dropped]
    if len(label_names) < 2:
        raise DataError(f"{where}: need at least two classes after dropping small ones, found {label_names}")
    index = {name: position for position, name in enumerate(label_names)}
    canonical.insert(2, LABEL, canonical["label_name"].map(index).astype(int))
    return canonical, label_names, dropped


def _fail_rows(where: str, bad_rows: pd.Series, problem: str, values: pd.Series | None = None) -> None:
    if len(bad_rows) == 0:
        return
    shown = ", ".join(str(int(row)) for row in bad_rows.iloc[:_SHOWN_ROWS])
    more = f" and {len(bad_rows) - _SHOWN_ROWS} more" if len(bad_rows) > _SHOWN_ROWS else ""
    found = ""
    if values is not None:
        found = f" (found {sorted(set(values.loc[bad_rows.index].astype(str)))[:_SHOWN_ROWS]})"
    raise DataError(f"{where}: {problem}{found}: row(s) {shown}{more}")


def fingerprint(frame: pd.DataFrame, config: DataConfig, label_names: list[str]) -> str:
    """SHA-256 over the canonical rows (text, label, groups) and the column mapping."""
    digest = hashlib.sha256()
    mapping = {
        "text": config.text_column,
        "label": config.label_column,
        "groups": config.group_columns,
        "labels": label_names,
    }
    digest.update(json.dumps(mapping, sort_keys=True).encode())
    columns = [TEXT, "label_name", *config.group_columns]
    for record in frame[columns].itertuples(index=False):
        digest.update(json.dumps(list(record), ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def rows_fingerprint(frame: pd.DataFrame, label_names: list[str], *, text_column: str = "text",
                     label_column: str = "label") -> str:
    """`fingerprint` of rows loaded outside `load_splits` (a benchmark's), labels given as indices into
    `label_names`: the key of their privacy budget ledger (`secure_ft.privacy.budget_ledger`)."""
    canonical = pd.DataFrame({TEXT: frame[text_column].astype(str).tolist(),
                              "label_name": [label_names[int(index)] for index in frame[label_column]]})
    mapping = DataConfig(source="rows", text_column=text_column, label_column=label_column, group_columns=[])
    return fingerprint(canonical, mapping, label_names)


def split(frame: pd.DataFrame, config: DataConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified train / validation / test split, deterministic for a seed."""
    test_size = config.split.test_fraction
    validation_size = config.split.validation_fraction / (1 - test_size)
    try:
        rest, test = train_test_split(frame, test_size=test_size, stratify=frame[LABEL], random_state=seed)
        train, validation = train_test_split(rest, test_size=validation_size, stratify=rest[LABEL], random_state=seed)
    except ValueError as error:
        raise DataError(f"cannot split the data stratified by label: {error}; raise data.min_class_count") from None
    return (part.sort_values("row").reset_index(drop=True) for part in (train, validation, test))


def load_splits(config: DataConfig, seed: int, keep_declared_labels: bool = False) -> DatasetSplits:
    """Load, validate, (optionally subsample,) fingerprint and split the configured data.

    `keep_declared_labels`: never narrow ``data.labels`` (see `validate`).
    """
    raw, where = read_table(config.source, config.format, config.hf_split)
    canonical, label_names, dropped = validate(raw, config, where, keep_declared_labels)
    if config.max_rows is not None and config.max_rows < len(canonical):
        canonical, _ = train_test_split(
            canonical, train_size=config.max_rows, stratify=canonical[LABEL], random_state=seed
        )
        canonical = canonical.sort_values("row").reset_index(drop=True)
    train, validation, test = split(canonical, config, seed)
    if min(len(train), len(validation), len(test)) == 0:
        raise DataError(f"{where}: a split came out empty; provide more rows")
    return DatasetSplits(
        train=train,
        validation=validation,
        test=test,
        label_names=label_names,
        group_columns=list(config.group_columns),
        derived_group_columns=list(config.derived_group_columns),
        fingerprint=fingerprint(canonical, config, label_names),
        source=where,
        dropped_classes=dropped,
    )
