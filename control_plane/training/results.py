"""What a job found, kept on the job (pure: pydantic models only): a retraining job's
challenge (``audit.types.ChallengeData``, also its event's payload) or a training job's
hyperparameter search."""

from __future__ import annotations

from pydantic import Field

from control_plane.audit.types import ChallengeData, Payload
from shared.manifest import ParamValue


class Candidate(Payload):
    params: dict[str, ParamValue] = Field(description="The parameters this candidate tried.")
    mean: float = Field(description="Mean cross-validation score.")
    std: float = Field(description="Its standard deviation across folds.")


class SearchResult(Payload):
    """A training job's hyperparameter search: every candidate's cross-validation score on
    the training rows, and the one registered."""

    metric: str = Field(description="Cross-validation score (accuracy, or r2 for regression).")
    folds: int = Field(description="Cross-validation folds.")
    grid_size: int = Field(description="Combinations in the grid; candidates tried at most.")
    candidates: list[Candidate] = Field(description="Every candidate tried, in order.")
    best: dict[str, ParamValue] = Field(description="The winning candidate's parameters.")


JobResult = ChallengeData | SearchResult
