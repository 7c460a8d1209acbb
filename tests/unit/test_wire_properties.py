"""Property-based tests over every wire document: whatever bytes arrive, parsing either
refuses them (``ValidationError``) or yields a document that is within bounds, finite, and
writes back to JSON that parses to the same document — so nothing accepted can fail to be
read back later."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shared.messages import (
    Ack,
    DesiredState,
    DeviceState,
    OnlineStatus,
    SampleBatch,
    SequenceFloor,
    TelemetryWindow,
)
from shared.stats import LATENCY_BUCKETS
from shared.wire import MAX_SAFE_INT

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SHA = "a" * 64


def valid_documents() -> dict[type[BaseModel], dict[str, Any]]:
    """One valid document of each kind, as JSON values (the mutations start from these)."""
    window = {
        "schema_version": 1,
        "device_id": "dev-1",
        "seq": 3,
        "window_start": (NOW - timedelta(minutes=1)).isoformat(),
        "window_end": NOW.isoformat(),
        "models": [
            {
                "name": "fault",
                "version": 2,
                "sha256": SHA,
                "requests": 5,
                "errors": 0,
                "latency_counts": [5] + [0] * (LATENCY_BUCKETS - 1),
                "features": [
                    {
                        "counts": [1, 4],
                        "below": 0,
                        "above": 0,
                        "missing": 0,
                        "n": 5,
                        "sum": 2.5,
                        "sum_sq": 1.5,
                    }
                ],
                "predictions": [3, 2],
            }
        ],
        "outbox_dropped": 0,
    }
    status = {
        "name": "fault",
        "active": {"name": "fault", "version": 2, "sha256": SHA},
        "previous": None,
        "phase": "serving",
    }
    state = {
        "schema_version": 1,
        "device_id": "dev-1",
        "seq": 7,
        "agent_version": "0.1.0",
        "labels": {"site": "berlin"},
        "deployment_seq": 3,
        "models": [status],
        "last_error": None,
        "dropped_messages": 0,
        "outbox_dropped": 0,
        "updated_at": NOW.isoformat(),
    }
    return {
        TelemetryWindow: window,
        DeviceState: state,
        OnlineStatus: {"schema_version": 1, "device_id": "dev-1", "online": True},
        SampleBatch: {
            "schema_version": 1,
            "device_id": "dev-1",
            "seq": 1,
            "model": {"name": "fault", "version": 2, "sha256": SHA},
            "rows": [{"request_id": "r-1", "features": [1.0, None], "prediction": 1}],
        },
        Ack: {"schema_version": 1, "channel": "telemetry", "seqs": [1, 2]},
        SequenceFloor: {
            "device_id": "dev-1",
            "deployment_seq": 1,
            "telemetry_seq": 2,
            "samples_seq": 0,
            "state_seq": 9,
        },
    }


DOCUMENTS = valid_documents()
MODELS = [*DOCUMENTS, DesiredState]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["NaN", "1e309", "900003", "\n", "2099-01-01T00:00:00Z", "\x00"]),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value sits at."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(document))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


def check_bounded(value: Any) -> None:
    """What a reader may rely on: finite floats, integers within ±(2^53 - 1)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        assert abs(value) <= MAX_SAFE_INT
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            check_bounded(item)
    elif isinstance(value, list):
        for item in value:
            check_bounded(item)


def accepted_reads_back(model: type[BaseModel], payload: bytes) -> None:
    try:
        document = model.model_validate_json(payload)
    except ValidationError:
        return  # refused: fine
    written = document.model_dump_json()
    check_bounded(json.loads(written))
    assert model.model_validate_json(written) == document


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=400))
def test_any_bytes_are_refused_or_read_back(model: type[BaseModel], payload: bytes) -> None:
    accepted_reads_back(model, payload)


@pytest.mark.parametrize("model", list(DOCUMENTS), ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), value=json_values)
def test_any_field_set_to_any_value_is_refused_or_read_back(
    model: type[BaseModel], data: st.DataObject, value: Any
) -> None:
    document = DOCUMENTS[model]
    model.model_validate_json(json.dumps(document))  # the starting point is valid
    path = data.draw(st.sampled_from(paths(document)))
    payload = json.dumps(replaced(document, path, value), allow_nan=True).encode()
    accepted_reads_back(model, payload)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("seq",), "900003"),  # strings are not numbers
        (("seq",), True),  # nor are booleans
        (("seq",), 2**53),  # beyond what every JSON reader reads back exactly
        (("models", 0, "version"), True),
        (("models", 0, "requests"), -1),
        (("models", 0, "features", 0, "sum"), float("nan")),
        (("models", 0, "features", 0, "sum_sq"), float("inf")),
        (("window_end",), (NOW + timedelta(days=30)).isoformat()),  # a 30-day window
        (("models", 0, "latency_counts"), [1, 2]),
    ],
)
def test_the_audits_findings_are_refused(path: tuple[Any, ...], value: Any) -> None:
    payload = json.dumps(replaced(DOCUMENTS[TelemetryWindow], path, value), allow_nan=True)
    with pytest.raises(ValidationError):
        TelemetryWindow.model_validate_json(payload)
