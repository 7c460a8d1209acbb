import re

import pytest

from control_plane.errors import InvalidInputError
from control_plane.training.algorithms import ALGORITHMS, get_algorithm, validate_params


def test_defaults_are_valid_for_every_algorithm() -> None:
    for algorithm in ALGORITHMS.values():
        assert validate_params(algorithm, {}) == algorithm.defaults


def test_params_are_merged_and_typed() -> None:
    rf = get_algorithm("classification", "random_forest")
    params = validate_params(rf, {"n_estimators": 20.0, "max_depth": None})
    assert params["n_estimators"] == 20 and isinstance(params["n_estimators"], int)
    assert params["max_depth"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_trees": 5}, "unknown parameter 'n_trees'"),
        ({"n_estimators": 0}, "outside [1, 500]"),
        ({"n_estimators": 2.5}, "must be an integer"),
        ({"n_estimators": "5"}, "must be a number"),
        ({"n_estimators": True}, "must be a number"),
        ({"min_samples_leaf": None}, "may not be null"),
    ],
)
def test_bad_params_name_the_parameter(params: dict, message: str) -> None:  # type: ignore[type-arg]
    rf = get_algorithm("classification", "random_forest")
    with pytest.raises(InvalidInputError, match=re.escape(message)) as info:
        validate_params(rf, params)
    assert info.value.loc == ("body", "params", next(iter(params)))


def test_exclusive_lower_bound() -> None:
    with pytest.raises(InvalidInputError, match=r"outside \(0"):
        validate_params(get_algorithm("classification", "logreg"), {"C": 0})


def test_unknown_algorithm_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="logreg"):
        get_algorithm("classification", "svm")
    with pytest.raises(InvalidInputError):
        get_algorithm("regression", "logreg")
