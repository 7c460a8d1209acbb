"""Models trained elsewhere in formats other than ONNX: loaded without unpickling anything a
client sent (skops with an explicit list of trusted types; XGBoost's and LightGBM's own
model formats), described (features, task, classes), run, and converted to ONNX
(skl2onnx, onnxmltools) for the parity gate to compare with the source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from control_plane.errors import InvalidInputError, JobFailedError
from shared.manifest import Task

SourceFormat = Literal["sklearn", "xgboost", "lightgbm"]
# What a scikit-learn upload may hold beyond skops' own defaults (which cover estimators,
# numpy's arrays and scalars): the trees' node storage, which scikit-learn indexes without
# bounds checks, so every tree is checked before anything runs it (``_check_trees``). Not
# numpy's or anyone else's functions: a FunctionTransformer(numpy.load) would run on the
# inputs.
TREE = "sklearn.tree._tree.Tree"
TREE_PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
TRUSTED_TYPES = frozenset({TREE, TREE_PREDICTOR})
ONNXMLTOOLS_OPSET = 15  # the highest onnxmltools' converters target


@dataclass(frozen=True)
class Source:
    """A loaded source model. ``classes``: a classifier's class names in the order of its
    class indices when the model knows them (scikit-learn), else ``None``."""

    format: SourceFormat
    model: Any
    task: Task
    n_features: int
    n_classes: int  # 0: a regressor
    classes: list[str] | None

    def outputs(self, X: npt.NDArray[np.float32]) -> tuple[npt.NDArray[Any], Any]:
        """Probabilities ``[n, classes]`` and class indices, or values ``[n]`` and ``None``."""
        if self.format == "sklearn":
            if self.task == "regression":
                return np.asarray(self.model.predict(X), np.float64).reshape(-1), None
            probabilities = np.asarray(self.model.predict_proba(X), np.float64)
            index = {label: i for i, label in enumerate(self.model.classes_)}
            return probabilities, np.asarray([index[v] for v in self.model.predict(X)])
        if self.format == "xgboost":
            import xgboost

            raw = np.asarray(self.model.predict(xgboost.DMatrix(X)), np.float64)
        else:
            raw = np.asarray(self.model.predict(X), np.float64)
        if self.task == "regression":
            return raw.reshape(-1), None
        probabilities = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
        return probabilities, probabilities.argmax(axis=1)

    def to_onnx(self) -> bytes:
        try:
            proto = _convert(self)
        except Exception as exc:  # the converters raise many types; the job reports it
            raise JobFailedError(
                f"ONNX conversion failed: {type(exc).__name__}: {str(exc)[:300]}",
                code="export_failed",
            ) from exc
        for output in proto.graph.output:  # onnxmltools fixes LightGBM's label batch to 1
            dims = output.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                dims[0].dim_param = "N"
        proto.producer_name = "edgefleet"
        return proto.SerializeToString()  # type: ignore[no-any-return]


def _convert(source: Source) -> Any:
    if source.format == "sklearn":
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        final = source.model.steps[-1][1] if hasattr(source.model, "steps") else source.model
        options = (
            {id(final): {"zipmap": False, "nocl": True}}
            if source.task == "classification"
            else None
        )
        return convert_sklearn(
            source.model,
            initial_types=[("input", FloatTensorType([None, source.n_features]))],
            options=options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    from onnxmltools.convert import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as ToolsFloat

    types = [("input", ToolsFloat([None, source.n_features]))]
    if source.format == "xgboost":
        return convert_xgboost(source.model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET)
    return convert_lightgbm(
        source.model, initial_types=types, target_opset=ONNXMLTOOLS_OPSET, zipmap=False
    )


def _refuse(message: str, code: str = "bad_model") -> InvalidInputError:
    return InvalidInputError(message, loc=("body",), code=code)


def load_source(fmt: SourceFormat, data: bytes) -> Source:
    """Load an upload, refusing with the reason what is not a model of that format."""
    if fmt == "sklearn":
        return _sklearn(data)
    if fmt == "xgboost":
        return _xgboost(data)
    return _lightgbm(data)


def _sklearn(data: bytes) -> Source:
    import skops.io
    from sklearn.base import is_classifier

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # a pickle, or anything else that is not a skops file
        raise _refuse(
            f"not a skops file ({type(exc).__name__}); save the fitted model with "
            "skops.io.dump (pickles are never loaded)",
            "not_skops",
        ) from exc
    refused = sorted(t for t in untrusted if t not in TRUSTED_TYPES)
    if refused:
        raise _refuse(
            f"untrusted types in the file: {', '.join(refused[:5])}; only scikit-learn "
            "estimators and their numpy state are loaded",
            "untrusted_types",
        )
    try:
        model = skops.io.loads(data, trusted=untrusted)
    except Exception as exc:
        raise _refuse(f"the skops file does not load: {str(exc)[:300]}") from exc
    if not hasattr(model, "predict") or not hasattr(model, "n_features_in_"):
        raise _refuse(f"a {type(model).__name__} is not a fitted scikit-learn estimator")
    _check_trees(model, int(model.n_features_in_))
    if is_classifier(model):
        classes = [str(c) for c in model.classes_]
        return Source(
            "sklearn", model, "classification", model.n_features_in_, len(classes), classes
        )
    return Source("sklearn", model, "regression", int(model.n_features_in_), 0, None)


def _xgboost(data: bytes) -> Source:
    import json

    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgboost.core.XGBoostError as exc:
        raise _refuse(
            "not an XGBoost model (save it with save_model as .json or .ubj)", "not_xgboost"
        ) from exc
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    n_classes = int(learner["learner_model_param"].get("num_class", "0"))
    if objective in ("multi:softprob", "binary:logistic"):
        classes = max(n_classes, 2)
        return Source("xgboost", booster, "classification", booster.num_features(), classes, None)
    if objective.startswith("reg:"):
        return Source("xgboost", booster, "regression", booster.num_features(), 0, None)
    raise _refuse(
        f"XGBoost objective {objective!r} is not supported; use multi:softprob, "
        "binary:logistic or a reg: objective",
        "unsupported_objective",
    )


def _lightgbm(data: bytes) -> Source:
    import lightgbm

    try:
        booster = lightgbm.Booster(model_str=data.decode("utf-8"))
    except (UnicodeDecodeError, lightgbm.basic.LightGBMError) as exc:
        raise _refuse(
            "not a LightGBM model (save it with Booster.save_model, a text file)",
            "not_lightgbm",
        ) from exc
    objective = str(booster.params.get("objective") or booster.dump_model()["objective"])
    objective = objective.split(maxsplit=1)[0]
    if objective in ("multiclass", "binary"):
        n_classes = max(int(booster.dump_model()["num_class"]), 2)
        return Source("lightgbm", booster, "classification", booster.num_feature(), n_classes, None)
    if objective in ("regression", "regression_l2", "l2", "regression_l1", "l1", "huber"):
        return Source("lightgbm", booster, "regression", booster.num_feature(), 0, None)
    raise _refuse(
        f"LightGBM objective {objective!r} is not supported; use multiclass, binary or "
        "a regression objective",
        "unsupported_objective",
    )


def _parts(obj: Any, depth: int = 0) -> Iterator[Any]:
    """Every object inside a fitted estimator (pipelines, ensembles, their trees)."""
    yield obj
    if depth > 8:
        return
    if isinstance(obj, list | tuple):
        children: Any = obj
    elif isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, np.ndarray) and obj.dtype == object:
        children = obj.ravel()
    elif type(obj).__module__.startswith("sklearn") and hasattr(obj, "__dict__"):
        children = vars(obj).values()
    else:
        return
    for child in children:
        yield from _parts(child, depth + 1)


def _check_trees(model: Any, n_features: int) -> None:
    """Every tree's nodes point inside the tree, forward only (no cycles), and split on
    features the model has: what a file could otherwise set to make ``predict`` read out of
    bounds or never end."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    for part in _parts(model):
        if isinstance(part, Tree):
            internal = part.children_left != -1
            ok = _nodes_ok(
                part.children_left, part.children_right, internal, part.feature, n_features
            ) and part.value.shape[0] == part.node_count == len(part.children_left)
        elif isinstance(part, TreePredictor):
            nodes = part.nodes
            internal = nodes["is_leaf"] == 0
            categorical = internal & (nodes["is_categorical"] != 0)
            ok = _nodes_ok(
                nodes["left"], nodes["right"], internal, nodes["feature_idx"], n_features
            ) and bool(np.all(nodes["bitset_idx"][categorical] < len(part.raw_left_cat_bitsets)))
        else:
            continue
        if not ok:
            raise _refuse(
                f"a {type(part).__name__} in the file has nodes that point outside it; "
                "refused before anything ran it",
                "bad_tree",
            )


def _nodes_ok(
    left: npt.NDArray[Any],
    right: npt.NDArray[Any],
    internal: npt.NDArray[np.bool_],
    feature: npt.NDArray[Any],
    n_features: int,
) -> bool:
    n = len(left)
    index = np.arange(n)
    return bool(
        len(right) == len(feature) == n
        and np.all(left[internal] > index[internal])
        and np.all(right[internal] > index[internal])
        and np.all(left[internal] < n)
        and np.all(right[internal] < n)
        and np.all((feature[internal] >= 0) & (feature[internal] < n_features))
    )
