"""Importing an ONNX model trained elsewhere: the checks an upload must pass before anything
is stored (``inspect_onnx``), and the job that turns it into a signed version the same way
training does (``import_version``): run by onnxruntime on a reference dataset, which gives
its metrics, reference statistics and golden vectors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session

from agent.inference import Outputs, describe, session_for
from control_plane.api.schemas import ImportFormat, ImportRequest
from control_plane.config import ServerSettings
from control_plane.errors import ControlPlaneError, InvalidInputError, JobFailedError
from control_plane.registry.versions import delete_unless_used
from control_plane.store.blobs import BlobStore
from control_plane.store.tables import Dataset, Job
from control_plane.training.algorithms import classification_metrics, regression_metrics
from control_plane.training.conversion import run_onnx
from control_plane.training.manifest import Trained
from control_plane.training.sources import load_source
from control_plane.training.supply_chain import (
    check_features_match,
    encode_labels,
    gate_parity,
    lineage_of,
    load_dataset,
    register_trained,
    set_progress,
)
from shared.hashing import sha256_bytes
from shared.manifest import ImportSource, Lineage, Parity, Task, TensorSpec

DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})  # what onnxruntime's CPU provider runs
LOOPS = frozenset({"Loop", "Scan"})  # a device must answer in bounded time
CHECK_ROWS = 1000  # reference rows the golden vectors and prediction reference come from
LOC = ("body",)


def _refuse(message: str, code: str) -> InvalidInputError:
    return InvalidInputError(message, loc=LOC, code=code)


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph`` and of the subgraphs inside its nodes' attributes."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _nodes(sub)


def inspect_onnx(data: bytes, *, task: Task, n_features: int, n_classes: int) -> None:
    """Refuse, with the reason, an upload a device could not run as this model: not ONNX,
    weights outside the file, custom operators, loops, opsets or operators this onnxruntime
    does not have, or inputs and outputs that do not fit the reference dataset and the
    device's contract (one float32 input ``[batch, features]``; a classifier's int64 labels
    then float probabilities ``[batch, classes]``; a regressor's float values)."""
    import onnx

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and others: not a model
        raise _refuse(f"not an ONNX model: {str(exc)[:200]}", "not_onnx") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise _refuse(
            "weights stored outside the file; upload one self-contained file", "external_data"
        )
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise _refuse(
            f"the ONNX checker refused it: {str(exc).splitlines()[0][:300]}", "invalid_onnx"
        ) from exc
    opset = {entry.domain: int(entry.version) for entry in proto.opset_import}
    custom = sorted(d for d in opset if d not in DOMAINS) + sorted(
        {n.domain for n in _nodes(proto.graph) if n.domain not in DOMAINS}
    )
    if custom:
        raise _refuse(
            f"custom operator domain {custom[0]!r}: devices run only the standard ONNX and "
            "ONNX-ML operators",
            "custom_op",
        )
    loops = sorted({n.op_type for n in _nodes(proto.graph) if n.op_type in LOOPS})
    if loops:
        raise _refuse(
            f"the graph loops ({', '.join(loops)}): a device must answer in bounded time",
            "loop",
        )
    try:
        session = session_for(data)
    except Exception as exc:  # onnxruntime raises its own types; its message names the cause
        raise _refuse(
            f"onnxruntime cannot load it: {str(exc).splitlines()[0][:300]}", "unsupported"
        ) from exc
    for node in [*session.get_inputs(), *session.get_outputs()]:
        if not str(node.type).startswith("tensor("):
            raise _refuse(
                f"{node.name!r} is a {node.type}; devices exchange plain tensors (skl2onnx: "
                "convert classifiers with options zipmap=False)",
                "output_mismatch",
            )
    inputs, outputs = describe(session)
    _check_input(inputs, n_features)
    _check_outputs(outputs, task, n_classes)


def check_upload(
    fmt: ImportFormat,
    data: bytes,
    *,
    task: Task,
    n_features: int,
    dataset_classes: list[str],
    classes: list[str] | None,
) -> list[str] | None:
    """Refuse, with the reason, an upload that is not a model a device could run as this
    one (see ``inspect_onnx``; other formats are loaded without unpickling and must fit
    the task, the features and the classes). Returns the class order to record: the one
    given, else the one a scikit-learn classifier knows by name, else ``None`` (the
    dataset's)."""
    if fmt == "onnx":
        inspect_onnx(data, task=task, n_features=n_features, n_classes=len(dataset_classes))
        return classes
    source = load_source(fmt, data)
    if source.task != task:
        raise _refuse(f"the {fmt} model is a {source.task} model, not {task}", "task_mismatch")
    if source.n_features != n_features:
        raise _refuse(
            f"the {fmt} model takes {source.n_features} features; the reference dataset has "
            f"{n_features}",
            "input_mismatch",
        )
    if task == "classification" and source.n_classes != len(dataset_classes):
        raise _refuse(
            f"the {fmt} model has {source.n_classes} classes; the reference dataset has "
            f"{len(dataset_classes)}",
            "output_mismatch",
        )
    named = source.classes if sorted(source.classes or []) == sorted(dataset_classes) else None
    if named and classes and classes != named:
        raise _refuse(
            f"--classes {classes} contradicts the model's own class order {named}",
            "class_mismatch",
        )
    return classes or named


def _check_input(inputs: list[TensorSpec], n_features: int) -> None:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise _refuse(
            f"{len(inputs)} inputs ({names}); devices feed one float32 tensor [batch, features]",
            "input_mismatch",
        )
    (tensor,) = inputs
    if tensor.dtype != "float32" or len(tensor.shape) != 2:
        raise _refuse(
            f"input {tensor.name!r} is {tensor.dtype} {tensor.shape}; devices feed float32 "
            "[batch, features]",
            "input_mismatch",
        )
    batch, width = tensor.shape
    if batch is not None:
        raise _refuse(
            f"input {tensor.name!r} has a fixed batch size {batch}; export it with a dynamic "
            "first dimension",
            "input_mismatch",
        )
    if width is not None and width != n_features:
        raise _refuse(
            f"input {tensor.name!r} takes {width} features; the reference dataset has {n_features}",
            "input_mismatch",
        )


def _check_outputs(outputs: list[TensorSpec], task: Task, n_classes: int) -> None:
    def describe_all() -> str:
        return ", ".join(f"{o.name} {o.dtype} {o.shape}" for o in outputs)

    if task == "regression":
        value = outputs[0]
        if value.dtype not in ("float32", "float64") or len(value.shape) not in (1, 2):
            raise _refuse(
                f"a regressor's first output must be float values [batch]; got {describe_all()}",
                "output_mismatch",
            )
        return
    if len(outputs) < 2:
        raise _refuse(
            f"a classifier needs a label output and a probabilities output; got {describe_all()}",
            "output_mismatch",
        )
    label, probabilities = outputs[0], outputs[1]
    if label.dtype != "int64" or len(label.shape) != 1:
        raise _refuse(
            f"a classifier's first output must be int64 class indices [batch]; got "
            f"{describe_all()} (string labels: encode them as indices in the order of the "
            "reference dataset's classes)",
            "output_mismatch",
        )
    if probabilities.dtype not in ("float32", "float64") or len(probabilities.shape) != 2:
        raise _refuse(
            f"a classifier's second output must be float probabilities [batch, classes]; got "
            f"{describe_all()} (skl2onnx: convert with options zipmap=False)",
            "output_mismatch",
        )
    width = probabilities.shape[1]
    if width is not None and width != n_classes:
        raise _refuse(
            f"the model gives {width} class probabilities; the reference dataset has "
            f"{n_classes} classes",
            "output_mismatch",
        )


def import_version(settings: ServerSettings, session: Session, job: Job) -> int:
    """The stored upload (converted to ONNX when it is another format), run on the reference
    dataset, registered as the next version. An ONNX upload that does not become a version,
    and every upload of another format (the version is its conversion), is removed."""
    request = ImportRequest.model_validate(job.request)
    blobs = BlobStore(settings.blobs_dir)
    try:
        version = _import(settings, session, job, request, blobs)
    except BaseException:
        session.rollback()
        delete_unless_used(session, blobs, request.sha256)
        raise
    if request.format != "onnx":
        delete_unless_used(session, blobs, request.sha256)
    return version


@dataclass(frozen=True)
class _Reference:
    """The reference dataset's complete rows, labels encoded in the model's class order."""

    dataset: Dataset
    features: list[str]
    classes: list[str]
    X: npt.NDArray[np.float32]
    y: npt.NDArray[Any]


def _reference(
    settings: ServerSettings, session: Session, job: Job, request: ImportRequest, blobs: BlobStore
) -> _Reference:
    dataset = session.get(Dataset, request.dataset_id)
    if dataset is None or dataset.id is None:
        raise JobFailedError(f"dataset {request.dataset_id} does not exist")
    parsed = load_dataset(blobs, dataset)
    check_features_match(session, job.model_name, parsed.features)
    classes, y = encode_labels(parsed, request.task, settings.max_classes)
    if request.classes:  # the model's own order of class indices
        y = np.asarray([request.classes.index(c) for c in classes], dtype=np.int64)[y]
        classes = list(request.classes)
    X = parsed.X.astype(np.float32)
    complete = ~np.isnan(X).any(axis=1)  # the model is not known to handle missing values
    return _Reference(dataset, parsed.features, classes, X[complete], y[complete])


def _import(
    settings: ServerSettings,
    session: Session,
    job: Job,
    request: ImportRequest,
    blobs: BlobStore,
) -> int:
    assert job.id is not None
    upload = blobs.read_bytes(request.sha256)
    if sha256_bytes(upload) != request.sha256:
        raise JobFailedError("the stored upload is corrupt (sha256 mismatch)")
    ref = _reference(settings, session, job, request, blobs)
    assert ref.dataset.id is not None
    set_progress(session, job.id, "converting" if request.format != "onnx" else "running", 0.2)
    model_bytes, parity = _as_onnx(settings, request, upload, ref)

    set_progress(session, job.id, "running", 0.5)
    onnx_session = session_for(model_bytes)
    out = run_onnx(onnx_session, ref.X, request.task)
    metrics = _measure(out, ref.y, request.task, ref.classes)
    check = np.random.default_rng(request.seed).permutation(len(ref.X))[:CHECK_ROWS]

    set_progress(session, job.id, "signing", 0.8)
    inputs, outputs = describe(onnx_session)
    trained = Trained(
        model_bytes=model_bytes,
        inputs=inputs,
        outputs=outputs,
        task=request.task,
        classes=ref.classes,
        features=ref.features,
        nan_policy="reject",
        X_train=ref.X,
        X_check=ref.X[check],
        check_outputs=Outputs(
            values=out.values[check], labels=None if out.labels is None else out.labels[check]
        ),
    )
    lineage = _lineage(settings, ref.dataset, request, job.id, metrics, len(ref.X), parity)
    return register_trained(
        settings, session, blobs, job, trained, lineage, request.format, ref.dataset.id
    )


def _as_onnx(
    settings: ServerSettings, request: ImportRequest, upload: bytes, ref: _Reference
) -> tuple[bytes, Parity]:
    """The ONNX a device will run, and the parity gate's measurement: an ONNX upload as it
    is (no source to compare with: 0 rows); another format converted, and the conversion
    checked against the source model on the reference rows."""
    if request.format == "onnx":
        return upload, Parity(
            rows=0,
            max_abs_diff=0.0,
            label_disagreements=0,
            atol=settings.parity_atol,
            max_label_disagreement=settings.parity_max_label_disagreement,
        )
    source = load_source(request.format, upload)
    converted = source.to_onnx()
    try:
        inspect_onnx(
            converted, task=request.task, n_features=len(ref.features), n_classes=len(ref.classes)
        )
    except ControlPlaneError as exc:
        raise JobFailedError(f"the conversion does not fit: {exc.message}") from exc
    values, labels = source.outputs(ref.X)
    out = run_onnx(session_for(converted), ref.X, request.task)
    return converted, gate_parity(settings, values, labels, out, request.format)


def _lineage(
    settings: ServerSettings,
    dataset: Dataset,
    request: ImportRequest,
    job_id: int,
    metrics: dict[str, float],
    rows: int,
    parity: Parity,
) -> Lineage:
    """An import's lineage: the reference dataset and what was uploaded."""
    return lineage_of(
        dataset,
        job_id,
        algorithm=request.format,
        params={},
        seed=request.seed,
        validation_fraction=0.0,
        train_rows=0,
        validation_rows=rows,
        metrics=metrics,
        parity=parity,
        source=ImportSource(
            format=request.format,
            sha256=request.sha256,
            filename=request.filename,
            uri=request.uri,
        ),
    )


def _measure(out: Outputs, y: npt.NDArray[Any], task: Task, classes: list[str]) -> dict[str, float]:
    """The model's metrics on the reference rows; class indices outside the dataset's
    classes (a model that encodes them otherwise) fail the import."""
    if task == "regression":
        return regression_metrics(y, out.values.astype(np.float64))
    assert out.labels is not None
    if out.labels.size and not (out.labels.min() >= 0 and out.labels.max() < len(classes)):
        raise JobFailedError(
            f"the model predicts class index {int(out.labels.max())}; the reference dataset "
            f"has classes 0 … {len(classes) - 1} ({', '.join(classes)})",
            code="output_mismatch",
        )
    return classification_metrics(y, out.labels, out.values.astype(np.float64), len(classes))
