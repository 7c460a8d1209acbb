"""Datasets: CSV parsing and validation (pure), and storing a validated upload.

A dataset is a CSV with a header row, numeric feature columns and one label column. The
raw bytes are kept in the blob store (content-addressed), so training re-reads exactly what
was uploaded and is reproducible.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from control_plane.errors import ConflictError, InvalidInputError
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Dataset
from shared.manifest import NanPolicy

DATASET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none", "n/a"})
MAX_COLUMN_NAME = 128
MAX_STORED_CLASSES = 1000
LabelKind = Literal["integer", "number", "string"]


@dataclass(frozen=True)
class DatasetLimits:
    max_rows: int
    max_columns: int
    min_rows: int


@dataclass
class ParsedDataset:
    features: list[str]
    X: npt.NDArray[np.float64]  # rows x features, NaN where missing (policy "impute")
    labels: list[str]
    label_kind: LabelKind
    classes: list[str] | None  # distinct labels, sorted; None when there are too many
    dropped_rows: int = 0
    missing_values: int = 0
    notes: list[str] = field(default_factory=list)


def _invalid(loc: str, message: str, code: str = "invalid_dataset") -> InvalidInputError:
    return InvalidInputError(message, loc=("body", loc), code=code)


def _as_float(text: str) -> float | None:
    """A finite float, NaN for a missing token, ``None`` when not a number."""
    stripped = text.strip()
    if stripped.lower() in MISSING_TOKENS:
        return math.nan
    try:
        value = float(stripped)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _label_kind(labels: list[str]) -> LabelKind:
    try:
        as_floats = [float(v) for v in labels]
    except ValueError:
        return "string"
    if all(
        math.isfinite(v) and v.is_integer() and re.fullmatch(r"-?\d+", s)
        for v, s in zip(as_floats, labels, strict=True)
    ):
        return "integer"
    return "number"


def sorted_classes(labels: list[str], kind: LabelKind) -> list[str]:
    distinct = set(labels)
    if kind == "string":
        return sorted(distinct)
    return sorted(distinct, key=float)


def parse_csv(
    data: bytes, *, label: str, nan_policy: NanPolicy, limits: DatasetLimits
) -> ParsedDataset:
    """Parse and validate a dataset CSV; raise ``InvalidInputError`` naming the rule broken.

    Streams over ``data`` (decoded line by line, never as one text) into a preallocated
    float64 matrix, and keeps one string per distinct label: beside the upload itself it
    holds about 8 bytes per feature value, so a 100 MiB upload peaks at 2-3× its size (the
    row-of-floats version needed ~30×)."""
    if not data or data.isspace():
        raise _invalid("file", "the file is empty", "empty")
    if b"\x00" in data:
        raise _invalid("file", "the file contains NUL bytes; a CSV is expected", "encoding")
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    try:
        return _parse_stream(csv.reader(stream), data.count(b"\n") + 1, label, nan_policy, limits)
    except UnicodeDecodeError as exc:
        raise _invalid("file", f"the file is not UTF-8 text ({exc.reason})", "encoding") from exc
    except csv.Error as exc:
        raise _invalid("file", f"malformed CSV: {exc}", "malformed") from exc


def _header(reader: Iterator[list[str]], label: str, limits: DatasetLimits) -> list[str]:
    """The header row, checked: size, names, the label among them, a feature besides."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration as exc:
        raise _invalid("file", "cannot read the header row", "header") from exc
    if len(header) > limits.max_columns:
        raise _invalid(
            "file",
            f"{len(header)} columns; at most {limits.max_columns} allowed",
            "too_many_columns",
        )
    if any(not h for h in header):
        raise _invalid("file", "the header has an empty column name", "header")
    if any(len(h) > MAX_COLUMN_NAME for h in header):
        raise _invalid("file", f"column names are at most {MAX_COLUMN_NAME} characters", "header")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise _invalid("file", f"duplicate column names: {', '.join(duplicates)}", "header")
    if label not in header:
        raise _invalid(
            "label", f"label column {label!r} is not in the header {header}", "missing_label_column"
        )
    if len(header) < 2:
        raise _invalid("file", "no feature columns besides the label", "no_features")
    return header


def _numbers(
    record: list[str], header: list[str], label_index: int, line_no: int, nan_policy: NanPolicy
) -> tuple[list[float], int]:
    """A row's feature values, and how many are missing (refused under ``reject``)."""
    values: list[float] = []
    missing = 0
    for i, cell in enumerate(record):
        if i == label_index:
            continue
        number = _as_float(cell)
        if number is None:
            raise _invalid(
                "file",
                f"line {line_no}, column {header[i]!r}: {cell[:40]!r} is not a finite number",
                "non_numeric",
            )
        if math.isnan(number):
            missing += 1
            if nan_policy == "reject":
                raise _invalid(
                    "file",
                    f"line {line_no}, column {header[i]!r}: missing "
                    "value, and nan_policy is 'reject' (use 'drop' or "
                    "'impute')",
                    "missing_value",
                )
        values.append(number)
    return values, missing


def _parse_stream(
    reader: Iterator[list[str]],
    lines: int,
    label: str,
    nan_policy: NanPolicy,
    limits: DatasetLimits,
) -> ParsedDataset:
    header = _header(reader, label, limits)
    label_index = header.index(label)
    features = [h for i, h in enumerate(header) if i != label_index]
    X = np.empty((min(lines, limits.max_rows + 1), len(features)), dtype=np.float64)
    rows = 0
    labels: list[str] = []
    distinct: dict[str, str] = {}  # each label string once, however many rows carry it
    dropped = 0
    missing_total = 0
    for line_no, record in enumerate(reader, start=2):
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if len(record) != len(header):
            raise _invalid(
                "file",
                f"line {line_no}: {len(record)} fields, the header has {len(header)}",
                "ragged_row",
            )
        if rows + dropped >= limits.max_rows:
            raise _invalid("file", f"more than {limits.max_rows} rows", "too_many_rows")
        label_value = record[label_index].strip()
        if label_value.lower() in MISSING_TOKENS:
            raise _invalid(
                "label", f"line {line_no}: the label {label!r} is missing", "missing_label"
            )
        values, row_missing = _numbers(record, header, label_index, line_no, nan_policy)
        if row_missing and nan_policy == "drop":
            dropped += 1
            continue
        missing_total += row_missing
        X[rows] = values
        rows += 1
        labels.append(distinct.setdefault(label_value, label_value))

    if rows < limits.min_rows:
        raise _invalid(
            "file",
            f"{rows} usable rows; at least {limits.min_rows} are needed",
            "too_few_rows",
        )
    kind = _label_kind(list(distinct))
    classes = sorted_classes(list(distinct), kind)
    return ParsedDataset(
        features=features,
        X=X[:rows],
        labels=labels,
        label_kind=kind,
        classes=classes if len(classes) <= MAX_STORED_CLASSES else None,
        dropped_rows=dropped,
        missing_values=missing_total,
    )


def check_name(name: str) -> None:
    if not DATASET_NAME_RE.fullmatch(name):
        raise InvalidInputError(
            "dataset names match ^[a-z0-9][a-z0-9_.-]{0,63}$",
            loc=("query", "name"),
            code="invalid_name",
        )


def store_dataset(
    session: Session,
    blobs: BlobStore,
    *,
    name: str,
    label: str,
    nan_policy: NanPolicy,
    data: bytes,
    parsed: ParsedDataset,
) -> tuple[Dataset, bool]:
    """Store a validated upload as the next version of ``name``; return ``(row, created)``.
    Uploading the same bytes with the same options again returns the existing version."""
    sha, newly_written = blobs.put_bytes(data)
    existing = session.exec(
        select(Dataset).where(
            Dataset.name == name,
            Dataset.sha256 == sha,
            Dataset.label_column == label,
            Dataset.nan_policy == nan_policy,
        )
    ).first()
    if existing is not None:
        return existing, False
    try:
        latest = session.exec(select(func.max(Dataset.version)).where(Dataset.name == name)).one()
        row = Dataset(
            name=name,
            version=(latest or 0) + 1,
            sha256=sha,
            size=len(data),
            rows=len(parsed.labels),
            label_column=label,
            label_kind=parsed.label_kind,
            nan_policy=nan_policy,
            dropped_rows=parsed.dropped_rows,
            missing_values=parsed.missing_values,
            features=parsed.features,
            classes=parsed.classes,
        )
        session.add(row)
        session.commit()
    except Exception as exc:
        session.rollback()
        if newly_written:  # nothing half-stored: no blob without its row
            blobs.delete(sha)
        if isinstance(exc, IntegrityError):
            raise ConflictError(
                f"another upload to {name!r} took version {row.version}; upload again",
                loc=("query", "name"),
            ) from exc
        raise
    session.refresh(row)
    return row, True
