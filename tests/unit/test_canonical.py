import json
import math

import pytest

from shared.canonical import MAX_SAFE_INT, canonical_json
from shared.errors import CanonicalJSONError


def test_sorted_compact_utf8() -> None:
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )


def test_key_order_and_whitespace_do_not_matter() -> None:
    a = json.loads('{"x": 1.5, "y": {"b": 2, "a": 1}}')
    b = json.loads('{"y":{"a":1,"b":2},"x":1.5}')
    assert canonical_json(a) == canonical_json(b)


@pytest.mark.parametrize(
    "value",
    [0.1, 1 / 3, 1e-7, 1e16, 5e-324, 1.7976931348623157e308, 0.30000001192092896, 123456.789],
)
def test_floats_round_trip_bit_for_bit(value: float) -> None:
    text = canonical_json([value])
    assert json.loads(text)[0] == value
    assert canonical_json(json.loads(text)) == text


def test_float_keeps_its_type_and_negative_zero_is_zero() -> None:
    assert canonical_json([1.0, 1, -0.0]) == b"[1.0,1,0.0]"


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, MAX_SAFE_INT + 1, {1: "x"}, b"bytes", {1, 2}]
)
def test_refuses_values_without_a_canonical_form(bad: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json({"v": bad})


def test_error_names_the_path() -> None:
    with pytest.raises(CanonicalJSONError, match=r"\$\.a\[1\]"):
        canonical_json({"a": [1.0, math.nan]})
