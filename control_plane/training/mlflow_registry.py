"""MLflow, when the settings name a tracking server (``mlflow_tracking_uri``): models are
imported from its registry (``models:/name/3``, ``models:/name@champion``), taking only
flavors whose files load without unpickling (ONNX, scikit-learn saved as skops, MLflow's
default, XGBoost and LightGBM in their own formats); and every version edgefleet trains
or imports is logged to it as a run, so a team keeps one experiment history."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from control_plane.api.schemas import ImportFormat
from control_plane.config import ServerSettings
from control_plane.errors import InvalidInputError, PayloadTooLargeError
from control_plane.observability.logs import about
from control_plane.registry.versions import resolve_version
from control_plane.store.blobs import BlobStore
from shared.manifest import ModelManifest

log = logging.getLogger(__name__)

LOC = ("body", "uri")


@dataclass(frozen=True)
class Fetched:
    format: ImportFormat
    data: bytes
    filename: str


def fetch_model(uri: str, tracking_uri: str | None, max_bytes: int) -> Fetched:
    """The model file behind ``uri``, refused with the reason when it cannot be had or is
    in a flavor edgefleet does not take."""
    if not tracking_uri:
        raise InvalidInputError(
            "no MLflow tracking server is configured (setting mlflow_tracking_uri)",
            loc=LOC,
            code="mlflow_not_configured",
        )
    try:
        import mlflow
        import yaml
    except ImportError as exc:
        raise InvalidInputError(
            "MLflow's client is not installed here: pip install 'edgefleet[mlflow]'",
            loc=LOC,
            code="mlflow_not_installed",
        ) from exc
    _bounded_retries()
    with tempfile.TemporaryDirectory(prefix="edgefleet-mlflow-") as tmp:
        try:
            mlflow.set_tracking_uri(tracking_uri)
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
        except Exception as exc:  # MlflowException, connection errors: the message says
            raise InvalidInputError(
                f"MLflow cannot give {uri}: {str(exc).splitlines()[0][:300]}",
                loc=LOC,
                code="mlflow_not_found",
            ) from exc
        flavors = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {})
        fmt, name = _flavor(uri, flavors)
        path = (local / name).resolve()
        if not path.is_file() or local.resolve() not in path.parents:
            raise InvalidInputError(
                f"{uri}: its MLmodel names {name!r}, which is not a file of the model",
                loc=LOC,
                code="mlflow_bad_model",
            )
        if path.stat().st_size > max_bytes:
            raise PayloadTooLargeError(
                f"{uri} is {path.stat().st_size} bytes; the cap is {max_bytes}", loc=LOC
            )
        return Fetched(fmt, path.read_bytes(), path.name)


def _flavor(uri: str, flavors: dict[str, dict[str, object]]) -> tuple[ImportFormat, str]:
    """The flavor to import and its file, ONNX first."""
    if "onnx" in flavors:
        return "onnx", str(flavors["onnx"].get("data", "model.onnx"))
    sklearn = flavors.get("sklearn")
    if sklearn is not None:
        if sklearn.get("serialization_format") != "skops":
            raise InvalidInputError(
                f"{uri}: its scikit-learn flavor is a {sklearn.get('serialization_format')} "
                "file, and pickles are never loaded; log it with serialization_format='skops' "
                "(MLflow's default) or as ONNX",
                loc=LOC,
                code="mlflow_pickle",
            )
        return "sklearn", str(sklearn["pickled_model"])
    if "xgboost" in flavors:
        return "xgboost", str(flavors["xgboost"]["data"])
    if "lightgbm" in flavors:
        return "lightgbm", str(flavors["lightgbm"]["data"])
    raise InvalidInputError(
        f"{uri} has the flavors {sorted(flavors)}; edgefleet imports onnx, sklearn (skops), "
        "xgboost and lightgbm",
        loc=LOC,
        code="mlflow_flavor",
    )


def _bounded_retries() -> None:
    """A tracking server that is down answers within seconds, not after MLflow's default
    retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def log_to_mlflow(settings: ServerSettings, session: Session, model: str, version: int) -> None:
    """A run in experiment ``edgefleet-MODEL``: the version's parameters, metrics, the ONNX
    artifact and its signed manifest, tagged with its edgefleet model, version and sha256.
    The version is registered already: a failure here is logged, never fatal."""
    try:
        import mlflow

        row = resolve_version(session, model, str(version))
        manifest = ModelManifest.model_validate_json(row.manifest)
        _bounded_retries()
        assert settings.mlflow_tracking_uri is not None
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_experiment(f"edgefleet-{model}")
        with tempfile.TemporaryDirectory(prefix="edgefleet-mlflow-") as tmp:
            artifact = Path(tmp) / f"{model}-v{version}.onnx"
            artifact.write_bytes(BlobStore(settings.blobs_dir).read_bytes(row.sha256))
            (Path(tmp) / f"{model}-v{version}.manifest.json").write_text(row.manifest)
            with mlflow.start_run(run_name=f"{model} v{version}"):
                lineage = manifest.lineage
                mlflow.log_params({"algorithm": lineage.algorithm, **lineage.params})
                mlflow.log_metrics(lineage.metrics)
                mlflow.set_tags(
                    {
                        "edgefleet.model": model,
                        "edgefleet.version": str(version),
                        "edgefleet.sha256": row.sha256,
                        "edgefleet.dataset": f"{lineage.dataset_name} v{lineage.dataset_version}",
                    }
                )
                mlflow.log_artifacts(tmp, artifact_path="edgefleet")
    except Exception:  # MLflow down or not installed: the version stands without its run
        log.warning(
            "%s v%s: logging to MLflow failed",
            model,
            version,
            exc_info=True,
            extra=about(model=model, version=version),
        )
