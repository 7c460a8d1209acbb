import math

import pytest

from control_plane.errors import InvalidInputError
from control_plane.registry.datasets import DatasetLimits, ParsedDataset, parse_csv

LIMITS = DatasetLimits(max_rows=100, max_columns=5, min_rows=2)
BIG = DatasetLimits(max_rows=10**6, max_columns=100, min_rows=2)


def parse(
    text: str | bytes,
    *,
    label: str = "y",
    nan_policy: str = "reject",
    limits: DatasetLimits = LIMITS,
) -> ParsedDataset:
    data = text.encode() if isinstance(text, str) else text
    return parse_csv(data, label=label, nan_policy=nan_policy, limits=limits)  # type: ignore[arg-type]


def test_parses_features_and_labels() -> None:
    parsed = parse("a,y,b\n1,cat,2\n3.5,dog,-4e2\n")
    assert parsed.features == ["a", "b"]
    assert parsed.X.tolist() == [[1.0, 2.0], [3.5, -400.0]]
    assert parsed.labels == ["cat", "dog"]
    assert parsed.label_kind == "string"
    assert parsed.classes == ["cat", "dog"]


def test_integer_labels_sort_numerically() -> None:
    parsed = parse("a,y\n1,10\n2,9\n3,10\n")
    assert parsed.label_kind == "integer"
    assert parsed.classes == ["9", "10"]


@pytest.mark.parametrize(
    ("text", "loc", "code", "message"),
    [
        ("", "file", "empty", "empty"),
        ("   \n", "file", "empty", "empty"),
        ("a,b\n1,2\n2,3\n", "label", "missing_label_column", "'y' is not in the header"),
        ("y\n1\n2\n", "file", "no_features", "no feature columns"),
        ("a,y\n1,x\nabc,y\n", "file", "non_numeric", "line 3, column 'a': 'abc'"),
        ("a,y\n1,x\ninf,y\n", "file", "non_numeric", "not a finite number"),
        ("a,y\n1,x\n,y\n", "file", "missing_value", "line 3, column 'a': missing value"),
        ("a,y\n1,x\n2,\n", "label", "missing_label", "line 3: the label 'y' is missing"),
        ("a,y\n1,x\n2,y,3\n", "file", "ragged_row", "line 3: 3 fields"),
        ("a,a,y\n1,2,x\n", "file", "header", "duplicate column names: a"),
        ("a,,y\n1,2,x\n", "file", "header", "empty column name"),
        ("a,b,c,d,e,y\n" + "1,2,3,4,5,x\n" * 3, "file", "too_many_columns", "6 columns"),
        ("a,y\n" + "1,x\n" * 101, "file", "too_many_rows", "more than 100 rows"),
        ("a,y\n1,x\n", "file", "too_few_rows", "1 usable rows"),
        (b"a,y\n1,\xff\n2,x\n", "file", "encoding", "not UTF-8"),
        (b"\x00\x01\x02", "file", "encoding", "NUL"),
    ],
)
def test_bad_input_is_refused_naming_the_rule(
    text: str | bytes, loc: str, code: str, message: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse(text)
    assert info.value.loc == ("body", loc)
    assert info.value.code == code
    assert message in info.value.message


def test_nan_policies() -> None:
    text = "a,b,y\n1,NA,x\n2,3,y\n4,5,x\n"
    dropped = parse(text, nan_policy="drop")
    assert dropped.dropped_rows == 1 and len(dropped.labels) == 2
    imputed = parse(text, nan_policy="impute")
    assert imputed.missing_values == 1 and math.isnan(imputed.X[0, 1])


def test_utf8_bom_and_blank_lines_are_accepted() -> None:
    parsed = parse("\ufeffa,y\n1,x\n\n2,y\n".encode())
    assert parsed.features == ["a"] and len(parsed.labels) == 2


def test_parsing_holds_about_one_upload_beside_the_upload() -> None:
    """Memory budget: the upload plus what parsing allocates stays under 3× the upload
    (tracemalloc counts numpy's buffers too; benchmarks/csv_memory.py measures 100 MiB)."""
    import tracemalloc

    from simulator.data import sensor_csv

    block = sensor_csv(2_000, seed=1).encode()
    header, body = block.split(b"\n", 1)
    data = header + b"\n" + body * 8  # ~0.5 MiB
    tracemalloc.start()
    try:
        parse_csv(data, label="fault", nan_policy="reject", limits=BIG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(data) + peak) / len(data) < 3
