"""Training: algorithms, parameter rules, scikit-learn pipelines and metrics.

Parameter rules are pure (``validate_params``) so the API refuses a bad request before a
job exists. The pipelines scale inputs only for linear models: trees split on raw values,
and a float32 scaler in front of a tree makes ONNX and scikit-learn disagree near split
thresholds (measured: 0.32 probability difference on HistGradientBoosting).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.errors import InvalidInputError
from shared.manifest import NanPolicy, ParamValue, Task


@dataclass(frozen=True)
class ParamRule:
    kind: type[int] | type[float]
    low: float
    high: float
    nullable: bool = False
    low_inclusive: bool = True


@dataclass(frozen=True)
class Algorithm:
    name: str
    task: Task
    rules: dict[str, ParamRule]
    defaults: dict[str, ParamValue]
    scale: bool
    build: Callable[[dict[str, ParamValue], int], Any]


def _estimator(
    module: str, name: str, **fixed: object
) -> Callable[[dict[str, ParamValue], int], Any]:
    """A builder for scikit-learn's ``module.name``: our parameter names are its keyword
    arguments; ``fixed`` are settings we do not expose (single-threaded fits, no early
    stopping, so a seed fully determines the model)."""

    def build(params: dict[str, ParamValue], seed: int) -> Any:
        estimator = getattr(importlib.import_module(module), name)
        return estimator(**params, random_state=seed, **fixed)

    return build


_logreg = _estimator("sklearn.linear_model", "LogisticRegression")
_ridge = _estimator("sklearn.linear_model", "Ridge")
_rf_clf = _estimator("sklearn.ensemble", "RandomForestClassifier", n_jobs=1)
_rf_reg = _estimator("sklearn.ensemble", "RandomForestRegressor", n_jobs=1)
_hgb_clf = _estimator("sklearn.ensemble", "HistGradientBoostingClassifier", early_stopping=False)
_hgb_reg = _estimator("sklearn.ensemble", "HistGradientBoostingRegressor", early_stopping=False)
_xgb_clf = _estimator("xgboost", "XGBClassifier", n_jobs=1, tree_method="hist")
_xgb_reg = _estimator("xgboost", "XGBRegressor", n_jobs=1, tree_method="hist")
_lgbm_clf = _estimator("lightgbm", "LGBMClassifier", n_jobs=1, verbose=-1)
_lgbm_reg = _estimator("lightgbm", "LGBMRegressor", n_jobs=1, verbose=-1)


_FOREST_RULES = {
    "n_estimators": ParamRule(int, 1, 500),
    "max_depth": ParamRule(int, 1, 64, nullable=True),
    "min_samples_leaf": ParamRule(int, 1, 100_000),
}
_FOREST_DEFAULTS: dict[str, ParamValue] = {
    "n_estimators": 100,
    "max_depth": 12,
    "min_samples_leaf": 1,
}
_HGB_RULES = {
    "max_iter": ParamRule(int, 1, 1000),
    "learning_rate": ParamRule(float, 0, 1, low_inclusive=False),
    "max_depth": ParamRule(int, 1, 64, nullable=True),
    "max_leaf_nodes": ParamRule(int, 2, 1024),
}
_HGB_DEFAULTS: dict[str, ParamValue] = {
    "max_iter": 100,
    "learning_rate": 0.1,
    "max_depth": None,
    "max_leaf_nodes": 31,
}

_XGB_RULES = {
    "n_estimators": ParamRule(int, 1, 2000),
    "max_depth": ParamRule(int, 1, 32),
    "learning_rate": ParamRule(float, 0, 1, low_inclusive=False),
}
_XGB_DEFAULTS: dict[str, ParamValue] = {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.3}
_LGBM_RULES = {
    "n_estimators": ParamRule(int, 1, 2000),
    "num_leaves": ParamRule(int, 2, 1024),
    "learning_rate": ParamRule(float, 0, 1, low_inclusive=False),
}
_LGBM_DEFAULTS: dict[str, ParamValue] = {
    "n_estimators": 100,
    "num_leaves": 31,
    "learning_rate": 0.1,
}

ALGORITHMS: dict[tuple[Task, str], Algorithm] = {
    ("classification", "logreg"): Algorithm(
        "logreg",
        "classification",
        {"C": ParamRule(float, 0, 1e6, low_inclusive=False), "max_iter": ParamRule(int, 1, 10_000)},
        {"C": 1.0, "max_iter": 1000},
        True,
        _logreg,
    ),
    ("classification", "random_forest"): Algorithm(
        "random_forest", "classification", _FOREST_RULES, _FOREST_DEFAULTS, False, _rf_clf
    ),
    ("classification", "hist_gb"): Algorithm(
        "hist_gb", "classification", _HGB_RULES, _HGB_DEFAULTS, False, _hgb_clf
    ),
    ("classification", "xgboost"): Algorithm(
        "xgboost", "classification", _XGB_RULES, _XGB_DEFAULTS, False, _xgb_clf
    ),
    ("classification", "lightgbm"): Algorithm(
        "lightgbm", "classification", _LGBM_RULES, _LGBM_DEFAULTS, False, _lgbm_clf
    ),
    ("regression", "ridge"): Algorithm(
        "ridge", "regression", {"alpha": ParamRule(float, 0, 1e6)}, {"alpha": 1.0}, True, _ridge
    ),
    ("regression", "random_forest"): Algorithm(
        "random_forest", "regression", _FOREST_RULES, _FOREST_DEFAULTS, False, _rf_reg
    ),
    ("regression", "hist_gb"): Algorithm(
        "hist_gb", "regression", _HGB_RULES, _HGB_DEFAULTS, False, _hgb_reg
    ),
    ("regression", "xgboost"): Algorithm(
        "xgboost", "regression", _XGB_RULES, _XGB_DEFAULTS, False, _xgb_reg
    ),
    ("regression", "lightgbm"): Algorithm(
        "lightgbm", "regression", _LGBM_RULES, _LGBM_DEFAULTS, False, _lgbm_reg
    ),
}
ALGORITHM_NAMES = sorted({name for _, name in ALGORITHMS})


def get_algorithm(task: Task, name: str) -> Algorithm:
    try:
        return ALGORITHMS[(task, name)]
    except KeyError:
        allowed = sorted(a for t, a in ALGORITHMS if t == task)
        raise InvalidInputError(
            f"unknown algorithm {name!r} for {task}; one of {allowed}",
            loc=("body", "algorithm"),
            code="unknown_algorithm",
        ) from None


def validate_params(
    algorithm: Algorithm,
    params: dict[str, ParamValue],
    where: tuple[str, ...] = ("body", "params"),
) -> dict[str, ParamValue]:
    """Defaults merged with ``params``, every value checked against its rule (a refusal's
    location is ``where`` and the parameter's name)."""
    merged = dict(algorithm.defaults)
    for key, value in params.items():
        loc = (*where, key)
        rule = algorithm.rules.get(key)
        if rule is None:
            raise InvalidInputError(
                f"unknown parameter {key!r} for {algorithm.name}; known: {sorted(algorithm.rules)}",
                loc=loc,
                code="unknown_param",
            )
        if value is None:
            if not rule.nullable:
                raise InvalidInputError(f"{key} may not be null", loc=loc, code="invalid_param")
            merged[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{key} must be a number", loc=loc, code="invalid_param")
        if rule.kind is int and not float(value).is_integer():
            raise InvalidInputError(f"{key} must be an integer", loc=loc, code="invalid_param")
        number = rule.kind(value)
        too_low = number < rule.low if rule.low_inclusive else number <= rule.low
        if too_low or number > rule.high:
            bracket = "[" if rule.low_inclusive else "("
            raise InvalidInputError(
                f"{key}={value} is outside {bracket}{rule.low:g}, {rule.high:g}]",
                loc=loc,
                code="invalid_param",
            )
        merged[key] = number
    return merged


def build_pipeline(
    algorithm: Algorithm, params: dict[str, ParamValue], nan_policy: NanPolicy, seed: int
) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = []
    if nan_policy == "impute":
        steps.append(("impute", SimpleImputer(strategy="median", keep_empty_features=True)))
    if algorithm.scale:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", algorithm.build(params, seed)))
    return Pipeline(steps)


def split(
    X: npt.NDArray[np.float32], y: npt.NDArray[Any], *, task: Task, fraction: float, seed: int
) -> tuple[Any, Any, Any, Any]:
    """Train/validation split; stratified for classification when every class allows it."""
    from sklearn.model_selection import train_test_split

    stratify = None
    if task == "classification":
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2:
            stratify = y
    parts: tuple[Any, Any, Any, Any] = tuple(
        train_test_split(X, y, test_size=fraction, random_state=seed, stratify=stratify)
    )
    return parts


def classification_metrics(
    y_true: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64],
    proba: npt.NDArray[np.float64],
    n_classes: int,
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    metrics = {
        "accuracy": float(accuracy_score(y_true, labels)),
        "f1_macro": float(f1_score(y_true, labels, average="macro")),
    }
    present = np.unique(y_true)
    if len(present) == n_classes:  # ROC-AUC needs every class in the validation rows
        if n_classes == 2:
            metrics["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            metrics["roc_auc"] = float(roc_auc_score(y_true, proba, multi_class="ovr"))
    return metrics


def regression_metrics(
    y_true: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64]
) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "rmse": float(np.sqrt(mean_squared_error(y_true, predicted))),
        "mae": float(mean_absolute_error(y_true, predicted)),
        "r2": float(r2_score(y_true, predicted)),
    }
