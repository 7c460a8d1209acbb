"""Control-plane settings: defaults < ``DATA_DIR/config.toml`` < ``EDGEFLEET_*`` env < arguments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from control_plane.errors import InvalidInputError
from control_plane.fleet.selectors import parse_selector
from shared.broker_address import parse_broker_urls
from shared.messages import MAX_MIRRORS, MirrorUrl
from shared.settings import TomlSettings, load

DEFAULT_DATA_DIR = Path("edgefleet-data")
CONFIG_FILE_NAME = "config.toml"
MiB = 1024 * 1024


class ArtifactMirror(BaseModel):
    """Mirrors for a group of devices: HTTP(S) servers holding a copy of the blob store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selector: str = Field(default="", description="The devices (label selector; empty: all).")
    urls: list[MirrorUrl] = Field(
        min_length=1,
        max_length=MAX_MIRRORS,
        description="Base URLs, tried in order; each serves `{url}/{sha256[:2]}/{sha256}`.",
    )

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        try:
            return parse_selector(value).text
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None


class ServerSettings(TomlSettings):
    """Settings of one control-plane process."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Keys, database, artifacts.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///DATA_DIR/edgefleet.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    tls_certfile: Path | None = Field(
        default=None,
        description="Serve HTTPS with this certificate (PEM; `edgefleet certs create` makes "
        "one), and tls_keyfile.",
    )
    tls_keyfile: Path | None = Field(default=None, description="Its private key (PEM).")
    max_dataset_bytes: int = Field(default=100 * MiB, ge=1, description="Upload size cap.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the control plane (and uvicorn)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`text`, or `json`: one object a line with device_id, rollout_id, model, "
        "version and job_id as fields.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server models are imported from (`models:/…` URIs), "
        "e.g. http://mlflow:5000; unset: no MLflow import.",
    )
    max_import_bytes: int = Field(
        default=256 * MiB,
        ge=1,
        le=2**31 - 1,
        description="Largest model file accepted by an import (ONNX's own limit is 2 GiB; a "
        "device downloads, hashes and loads the whole file).",
    )
    max_dataset_rows: int = Field(default=1_000_000, ge=10)
    max_dataset_columns: int = Field(default=1_000, ge=2)
    min_dataset_rows: int = Field(default=20, ge=2, description="Fewer rows cannot be split.")
    max_classes: int = Field(default=100, ge=2)
    parity_atol: float = Field(
        default=1e-4,
        gt=0,
        description="Largest |sklearn - onnxruntime| probability/value difference accepted. "
        "float32 arithmetic in ONNX gives ~1e-7; 1e-4 leaves 100x headroom and still "
        "catches a wrong conversion (those differ by 1e-2 or more).",
    )
    parity_max_label_disagreement: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="Largest share of validation rows whose class may differ (near-ties only).",
    )
    golden_vectors: int = Field(default=8, ge=1, le=256)
    reference_bins: int = Field(default=10, ge=2, le=100)
    training_workers: int = Field(default=1, ge=1, le=32)
    mqtt_url: str | None = Field(
        default=None,
        description="Broker for devices, mqtt://user:pass@host:port (user "
        "edgefleet-control-plane); unset: no device traffic. Several, comma-separated: the "
        "nodes of a broker cluster, tried in turn when one is unreachable or drops us.",
    )
    broker_accounts: Literal["dynsec", "manual"] = Field(
        default="dynsec",
        description="Who keeps the devices' broker accounts: `dynsec`, the control plane "
        "itself through mosquitto's dynamic security plugin (deploy/mosquitto, "
        "listeners-dynsec.conf; its account must be the plugin's admin), or `manual`, an "
        "operator with a password file (listeners-passwd.conf).",
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA bundle the control plane trusts for an mqtts:// broker (default: "
        "the system's).",
    )
    topic_root: str = Field(default="edgefleet/v1", description="MQTT topic root.")
    mqtt_subscribe_qos: int = Field(
        default=1,
        ge=0,
        le=1,
        description="QoS of the control plane's subscriptions to device messages. 0 on a "
        "NATS cluster: there each QoS 1 subscription is a JetStream consumer, which nodes "
        "refuse for as long as JetStream is busy re-electing after a node died. Nothing is "
        "lost at 0: telemetry stays in the device's outbox until acknowledged, and states "
        "are retained and come again with every (re)subscription.",
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        description="Consume telemetry and samples through $share/GROUP/… so several "
        "control-plane processes split them (state and online messages reach every process).",
    )
    desired_ttl_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=60,
        description="Signed desired states expire after this; "
        "they are re-signed when half of it is left.",
    )
    ingest_batch_max: int = Field(default=500, ge=1, description="Messages per ingest commit.")
    rollout_tick_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often rollouts are evaluated."
    )
    monitor_bucket_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Drift and accuracy are judged per bucket of this length: telemetry "
        "windows ending in it are merged across devices (match the agents' window).",
    )
    monitor_grace_seconds: float = Field(
        default=15.0,
        ge=0,
        le=3_600,
        description="A bucket is judged this long after it ends, so late windows count.",
    )
    artifact_mirrors: list[ArtifactMirror] = Field(
        default_factory=list,
        max_length=1000,
        description="Where devices fetch artifacts first: the first entry whose selector "
        "matches a device's labels names its mirrors, sent in its signed desired state; the "
        "control plane's artifact route stays the fallback. Mirrors are not trusted (the "
        'manifest\'s sha256 decides). Env: JSON, [{"selector": "site=berlin", "urls": [...]}].',
    )
    max_feedback_items: int = Field(
        default=10_000, ge=1, description="Labels per POST /feedback request."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self

    @field_validator("mqtt_url")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is not None:
            parse_broker_urls(value, "mqtt_url")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Resolved once, so worker processes and the server agree whatever their cwd.
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'edgefleet.db'}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"


def load_settings(
    data_dir: Path | None = None, config_file: Path | None = None, **overrides: Any
) -> ServerSettings:
    """Build settings in an entry point. ``data_dir``: argument, else ``EDGEFLEET_DATA_DIR``,
    else ``./edgefleet-data``; its ``config.toml`` is read when present."""
    resolved_dir = data_dir or Path(os.environ.get("EDGEFLEET_DATA_DIR", DEFAULT_DATA_DIR))
    toml_file = config_file or resolved_dir / CONFIG_FILE_NAME

    values = {k: v for k, v in overrides.items() if v is not None}
    return load(
        ServerSettings, toml_file if toml_file.is_file() else None, data_dir=resolved_dir, **values
    )


CONFIG_TEMPLATE = """\
# edgefleet control-plane settings. Environment variables EDGEFLEET_<NAME> override these,
# command-line options override both. Uncomment to change a default.

# database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/edgefleet"
# host = "127.0.0.1"
# port = 8000
# tls_certfile = "/etc/edgefleet/tls/server.pem"   # HTTPS (edgefleet certs create)
# tls_keyfile = "/etc/edgefleet/tls/server.key"
# max_dataset_bytes = 104857600   # 100 MiB upload cap
# max_dataset_rows = 1000000
# max_dataset_columns = 1000
# parity_atol = 0.0001            # sklearn vs onnxruntime tolerance
# parity_max_label_disagreement = 0.001
# golden_vectors = 8
# reference_bins = 10
# training_workers = 1
# mqtt_url = "mqtt://edgefleet-control-plane:PASSWORD@127.0.0.1:1884"
#   (a broker cluster: its nodes comma-separated, "mqtt://…@b1:1883,mqtt://…@b2:1883")
# broker_accounts = "dynsec"      # device accounts made by the control plane; "manual": by hand
# mqtt_ca_file = "/etc/edgefleet/ca.pem"    # for an mqtts:// broker with a private CA
# topic_root = "edgefleet/v1"
# desired_ttl_seconds = 604800          # 7 days; re-signed when half is left
# mlflow_tracking_uri = "http://127.0.0.1:5000"   # import models:/… from it; log each version
# max_import_bytes = 268435456                   # 256 MiB model upload cap
# [[artifact_mirrors]]            # devices fetch artifacts here first (a copy of DATA_DIR/blobs)
# selector = "site=berlin"
# urls = ["https://mirror.berlin.example/edgefleet-blobs"]
"""
