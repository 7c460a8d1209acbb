"""A typed client for the REST API (used by the CLI, the demo and tests). Needs only httpx
and pydantic, so it runs without the server extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from control_plane.api.schemas import (
    AliasPublic,
    BootstrapTokenCreate,
    BootstrapTokenIssued,
    BootstrapTokenPublic,
    Comparison,
    DatasetPublic,
    DeploymentCreate,
    DeploymentPublic,
    DeviceCreate,
    DevicePublic,
    DeviceRegistered,
    DevicesPreauthorize,
    DriftPointPublic,
    EventPublic,
    FeedbackCreate,
    FeedbackResult,
    Health,
    JobPublic,
    ModelPublic,
    RolloutCreate,
    RolloutPlanPublic,
    RolloutPublic,
    TokenIssued,
    TokenPublic,
    TrainRequest,
    VersionPublic,
)
from control_plane.monitoring.policy import ModelPolicy
from shared.trust import TrustStore

DEFAULT_URL = "http://127.0.0.1:8000"
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """The API answered with an error status; ``str()`` gives its reasons."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"HTTP {status_code}: {self.describe(detail)}")

    @staticmethod
    def describe(detail: Any) -> str:
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []))
                    parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(detail)


BULK_TIMEOUT_SECONDS = 1800.0  # one POST /devices of up to 10,000


class ApiClient:
    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate_json(self._check(self._http.get(path, params=params)).content)

    def _get_list(self, path: str, model: type[M], **params: Any) -> list[M]:
        response = self._check(self._http.get(path, params=params))
        return TypeAdapter(list[model]).validate_json(response.content)  # type: ignore[valid-type]

    def health(self) -> Health:
        return self._get("/healthz", Health)

    def trust_store(self) -> TrustStore:
        return self._get("/keys", TrustStore)

    def upload_dataset(
        self, path: Path, *, name: str, label: str, nan_policy: str = "reject"
    ) -> DatasetPublic:
        with path.open("rb") as handle:
            response = self._http.post(
                "/datasets",
                params={"name": name, "label": label, "nan_policy": nan_policy},
                content=handle,
                headers={"Content-Type": "text/csv", "Content-Length": str(path.stat().st_size)},
            )
        return DatasetPublic.model_validate_json(self._check(response).content)

    def datasets(self) -> list[DatasetPublic]:
        return self._get_list("/datasets", DatasetPublic)

    def dataset(self, dataset_id: int) -> DatasetPublic:
        return self._get(f"/datasets/{dataset_id}", DatasetPublic)

    def train(self, model: str, request: TrainRequest) -> JobPublic:
        response = self._http.post(f"/models/{model}/train", json=request.model_dump(mode="json"))
        return JobPublic.model_validate_json(self._check(response).content)

    def import_model(
        self,
        model: str,
        path: Path,
        *,
        dataset_id: int,
        task: str = "classification",
        classes: list[str] | None = None,
        fmt: str = "onnx",
    ) -> JobPublic:
        """Upload a model file to become the next version of ``model`` (a job)."""
        params: dict[str, Any] = {
            "dataset_id": dataset_id,
            "task": task,
            "filename": path.name,
            "format": fmt,
        }
        if classes:
            params["classes"] = classes
        with path.open("rb") as handle:
            response = self._http.post(
                f"/models/{model}/import",
                params=params,
                content=handle,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
        return JobPublic.model_validate_json(self._check(response).content)

    def import_from_mlflow(
        self,
        model: str,
        uri: str,
        *,
        dataset_id: int,
        task: str = "classification",
        classes: list[str] | None = None,
    ) -> JobPublic:
        """Import ``uri`` (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) from the
        control plane's MLflow registry (a job)."""
        body = {"uri": uri, "dataset_id": dataset_id, "task": task, "classes": classes}
        response = self._http.post(f"/models/{model}/import/mlflow", json=body)
        return JobPublic.model_validate_json(self._check(response).content)

    def job(self, job_id: int) -> JobPublic:
        return self._get(f"/jobs/{job_id}", JobPublic)

    def jobs(self, limit: int = 50) -> list[JobPublic]:
        return self._get_list("/jobs", JobPublic, limit=limit)

    def events(self, **filters: Any) -> list[EventPublic]:
        """The audit log, newest first; filters: type, device_id, rollout_id, model, job_id,
        limit (``None`` values are left out)."""
        given = {k: v for k, v in filters.items() if v is not None}
        response = self._check(self._http.get("/events", params=given))
        return TypeAdapter(list[EventPublic]).validate_json(response.content)

    def drift(self, model: str, **filters: Any) -> list[DriftPointPublic]:
        given = {k: v for k, v in filters.items() if v is not None}
        return self._get_list(f"/models/{model}/drift", DriftPointPublic, **given)

    def policy(self, model: str) -> ModelPolicy:
        return self._get(f"/models/{model}/policy", ModelPolicy)

    def set_policy(self, model: str, policy: ModelPolicy) -> ModelPolicy:
        response = self._http.put(f"/models/{model}/policy", json=policy.model_dump(mode="json"))
        return ModelPolicy.model_validate_json(self._check(response).content)

    def retrain(self, model: str, champion_version: int | None = None) -> JobPublic:
        body = {"champion_version": champion_version} if champion_version else None
        response = self._http.post(f"/models/{model}/retrain", json=body)
        return JobPublic.model_validate_json(self._check(response).content)

    def approve(self, model: str, version: int) -> dict[str, str]:
        response = self._http.post(f"/models/{model}/versions/{version}/approve")
        result: dict[str, str] = self._check(response).json()
        return result

    def post_feedback(self, body: FeedbackCreate) -> FeedbackResult:
        response = self._http.post("/feedback", json=body.model_dump(mode="json"))
        return FeedbackResult.model_validate_json(self._check(response).content)

    def models(self) -> list[ModelPublic]:
        return self._get_list("/models", ModelPublic)

    def versions(self, model: str) -> list[VersionPublic]:
        return self._get_list(f"/models/{model}/versions", VersionPublic)

    def version(self, model: str, ref: str) -> VersionPublic:
        return self._get(f"/models/{model}/versions/{ref}", VersionPublic)

    def compare(self, model: str, a: str, b: str) -> Comparison:
        return self._get(f"/models/{model}/compare", Comparison, a=a, b=b)

    def set_alias(self, model: str, alias: str, version: int) -> AliasPublic:
        response = self._http.put(f"/models/{model}/aliases/{alias}", json={"version": version})
        return AliasPublic.model_validate_json(self._check(response).content)

    def download_artifact(self, sha256: str, destination: Path) -> None:
        with self._http.stream("GET", f"/artifacts/{sha256}") as response:
            if response.is_error:
                response.read()
                self._check(response)
            with destination.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)

    def create_token(self, name: str, role: str) -> TokenIssued:
        response = self._http.post("/tokens", json={"name": name, "role": role})
        return TokenIssued.model_validate_json(self._check(response).content)

    def tokens(self) -> list[TokenPublic]:
        return self._get_list("/tokens", TokenPublic)

    def revoke_token(self, token_id: int) -> TokenPublic:
        response = self._http.delete(f"/tokens/{token_id}")
        return TokenPublic.model_validate_json(self._check(response).content)

    def register_device(self, device_id: str, labels: dict[str, str]) -> DeviceRegistered:
        response = self._http.post("/devices", json={"id": device_id, "labels": labels})
        return DeviceRegistered.model_validate_json(self._check(response).content)

    def register_devices(self, devices: list[DeviceCreate]) -> list[DeviceRegistered]:
        body = [d.model_dump() for d in devices]
        # Not the client's usual minute: with dynsec accounts the broker makes ~50 a second,
        # and a request given up on would leave devices registered whose tokens nobody saw.
        response = self._http.post("/devices", json=body, timeout=BULK_TIMEOUT_SECONDS)
        return TypeAdapter(list[DeviceRegistered]).validate_json(self._check(response).content)

    def device_command(self, device_id: str, command: str) -> DevicePublic:
        """``approve`` or ``reject``."""
        response = self._http.post(f"/devices/{device_id}/{command}")
        return DevicePublic.model_validate_json(self._check(response).content)

    def reissue_device(self, device_id: str) -> DeviceRegistered:
        response = self._http.post(f"/devices/{device_id}/reissue")
        return DeviceRegistered.model_validate_json(self._check(response).content)

    def remove_device(self, device_id: str) -> DevicePublic:
        response = self._http.delete(f"/devices/{device_id}")
        return DevicePublic.model_validate_json(self._check(response).content)

    def preauthorize(self, body: DevicesPreauthorize) -> list[DevicePublic]:
        response = self._http.post("/devices/preauthorize", json=body.model_dump(mode="json"))
        return TypeAdapter(list[DevicePublic]).validate_json(self._check(response).content)

    def create_bootstrap_token(self, body: BootstrapTokenCreate) -> BootstrapTokenIssued:
        response = self._http.post("/bootstrap-tokens", json=body.model_dump(mode="json"))
        return BootstrapTokenIssued.model_validate_json(self._check(response).content)

    def bootstrap_tokens(self) -> list[BootstrapTokenPublic]:
        return self._get_list("/bootstrap-tokens", BootstrapTokenPublic)

    def revoke_bootstrap_token(self, token_id: int) -> BootstrapTokenPublic:
        response = self._http.delete(f"/bootstrap-tokens/{token_id}")
        return BootstrapTokenPublic.model_validate_json(self._check(response).content)

    def devices(self, selector: str = "") -> list[DevicePublic]:
        return self._get_list("/devices", DevicePublic, selector=selector)

    def set_labels(self, device_id: str, labels: dict[str, str]) -> DevicePublic:
        response = self._http.patch(f"/devices/{device_id}", json={"labels": labels})
        return DevicePublic.model_validate_json(self._check(response).content)

    def create_rollout(self, body: RolloutCreate) -> RolloutPublic:
        response = self._http.post(
            "/rollouts", json=body.model_dump(mode="json", exclude_none=True)
        )
        return RolloutPublic.model_validate_json(self._check(response).content)

    def plan_rollout(self, body: RolloutCreate) -> RolloutPlanPublic:
        response = self._http.post(
            "/rollouts",
            params={"dry_run": "true"},
            json=body.model_dump(mode="json", exclude_none=True),
        )
        return RolloutPlanPublic.model_validate_json(self._check(response).content)

    def rollouts(self) -> list[RolloutPublic]:
        return self._get_list("/rollouts", RolloutPublic)

    def rollout(self, rollout_id: str) -> RolloutPublic:
        return self._get(f"/rollouts/{rollout_id}", RolloutPublic)

    def rollout_events(self, rollout_id: str) -> list[EventPublic]:
        return self._get_list(f"/rollouts/{rollout_id}/events", EventPublic)

    def rollout_command(self, rollout_id: str, command: str) -> RolloutPublic:
        response = self._http.post(f"/rollouts/{rollout_id}/{command}")
        return RolloutPublic.model_validate_json(self._check(response).content)

    def device(self, device_id: str) -> DevicePublic:
        return self._get(f"/devices/{device_id}", DevicePublic)

    def deploy(self, device_id: str, model: str, version: str) -> DeploymentPublic:
        body = DeploymentCreate(device_id=device_id, model=model, version=version)
        response = self._http.post("/deployments", json=body.model_dump())
        return DeploymentPublic.model_validate_json(self._check(response).content)
