"""A bounded hyperparameter search with cross-validation on the training rows, using
scikit-learn's search utilities (``ParameterGrid``, ``ParameterSampler``, ``cross_val_score``)
one candidate at a time so the job reports its progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.api.schemas import SearchSpec
from control_plane.errors import JobFailedError
from control_plane.training.algorithms import Algorithm, build_pipeline, validate_params
from control_plane.training.results import Candidate, SearchResult
from shared.manifest import NanPolicy, ParamValue, Task


def search(
    spec: SearchSpec,
    algorithm: Algorithm,
    params: dict[str, ParamValue],
    nan_policy: NanPolicy,
    seed: int,
    task: Task,
    X: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    progress: Callable[[int, int], None],
) -> SearchResult:
    """Score every candidate (the whole grid, or ``max_candidates`` drawn from it) by
    cross-validation; the best is the highest mean score, the first of equals."""
    from sklearn.model_selection import (
        KFold,
        ParameterGrid,
        ParameterSampler,
        StratifiedKFold,
        cross_val_score,
    )

    grid = ParameterGrid(spec.params)
    candidates: list[dict[str, Any]] = (
        list(grid)
        if len(grid) <= spec.max_candidates
        else list(ParameterSampler(spec.params, n_iter=spec.max_candidates, random_state=seed))
    )
    if task == "classification":
        if np.unique(y, return_counts=True)[1].min() < spec.folds:
            raise JobFailedError(
                f"search: some class has fewer training rows than the {spec.folds} folds"
            )
        cv: Any = StratifiedKFold(spec.folds, shuffle=True, random_state=seed)
    else:
        cv = KFold(spec.folds, shuffle=True, random_state=seed)
    metric = "accuracy" if task == "classification" else "r2"
    tried = []
    for i, candidate in enumerate(candidates):
        merged = validate_params(algorithm, {**params, **candidate}, ("body", "search", "params"))
        pipeline = build_pipeline(algorithm, merged, nan_policy, seed)
        scores = cross_val_score(pipeline, X, y, cv=cv, scoring=metric, n_jobs=1)
        tried.append(
            Candidate(params=candidate, mean=float(scores.mean()), std=float(scores.std()))
        )
        progress(i + 1, len(candidates))
    best = max(tried, key=lambda c: c.mean)  # max keeps the first of equals
    return SearchResult(
        metric=metric, folds=spec.folds, grid_size=len(grid), candidates=tried, best=best.params
    )
