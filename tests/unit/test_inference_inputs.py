import math

import numpy as np
import pytest

from agent.inference import InputError, LoadedModel, session_for
from shared.signing import SigningKey
from simulator.data import FEATURES
from simulator.rig.models import make_model


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    manifest, data = make_model(SigningKey.generate())
    return LoadedModel(manifest=manifest, session=session_for(data))


def test_fast_and_slow_paths_agree(model: LoadedModel) -> None:
    rows = [[60.0, 2, 12.5, 4.0, 1500, 45.0], [61.5, 2.1, 12.0, 3.9, 1490.0, 44]]
    X = model.rows_from_lists(rows)
    assert X.dtype == np.float32
    assert X.tolist() == np.asarray(rows, dtype=np.float32).tolist()
    assert model.rows_from_lists(np.asarray(rows)).tolist() == X.tolist()
    named = model.rows_from_named([dict(zip(FEATURES, r, strict=True)) for r in rows])
    assert named.tolist() == X.tolist()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[60.0, True, 12.5, 4.0, 1500, 45.0]], "vibration_mm_s must be a number"),
        ([[60.0, "2", 12.5, 4.0, 1500, 45.0]], "vibration_mm_s must be a number"),
        ([[60.0, None, 12.5, 4.0, 1500, 45.0]], "vibration_mm_s is missing"),
        ([[60.0, math.inf, 12.5, 4.0, 1500, 45.0]], "not a finite float32"),
        ([[60.0, 1e39, 12.5, 4.0, 1500, 45.0]], "not a finite float32"),
        ([[60.0, 10**400, 12.5, 4.0, 1500, 45.0]], "not a finite float32"),
        ([[60.0, 2.0]], "2 values; the model takes 6"),
        ([5.0], "a list of 6 numbers is expected"),
        ([], "no rows"),
    ],
)
def test_bad_rows_name_the_problem(model: LoadedModel, rows: list, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=message):
        model.rows_from_lists(rows)


def test_named_rows(model: LoadedModel) -> None:
    with pytest.raises(InputError, match="unknown features"):
        model.rows_from_named([{"nope": 1.0}])
    with pytest.raises(InputError, match="missing features"):
        model.rows_from_named([{"temperature_c": 1.0}])


def test_flat_rows_take_the_same_checks(model: LoadedModel) -> None:
    """The v2 protocol's flat data: the fast path, and the slow one when a value is off."""
    rows = [[60.0, 2, 12.5, 4.0, 1500, 45.0], [61.5, 2.1, 12.0, 3.9, 1490.0, 44]]
    flat = [v for row in rows for v in row]
    assert model.rows_from_flat(flat, 2).tolist() == model.rows_from_lists(rows).tolist()
    for bad, message in ((10**400, "not a finite float32"), (True, "must be a number")):
        with pytest.raises(InputError, match=f"row 1: .*{message}"):
            model.rows_from_flat([*flat[:10], bad, *flat[11:]], 2)
