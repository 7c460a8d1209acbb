"""Agent settings: defaults < the TOML file given by ``--config`` < ``EDGEFLEET_AGENT_*`` env.

Everything an agent needs comes from one ``AgentSettings`` object (no globals), so many
agents can run in one process (the simulator does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.broker_address import BrokerAddress, parse_broker_urls
from shared.messages import DEVICE_ID_PATTERN
from shared.settings import TomlSettings, load
from shared.topics import DEFAULT_ROOT

MiB = 1024 * 1024
DEFAULT_MAX_ARTIFACT_BYTES = 512 * MiB  # also the cap of `edgefleet serve`


class AgentSettings(TomlSettings):
    """Settings of one device agent."""

    # Floats are finite: ``probation_seconds = inf`` would be the never-ending probation.
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_AGENT_", extra="forbid", allow_inf_nan=False
    )

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="This device's id.")
    broker_url: str = Field(
        description="mqtt://host:port (logs in as device_id with token) or "
        "mqtt://user:pass@host:port; mqtts:// for TLS. Several, comma-separated: the nodes "
        "of a broker cluster, tried in turn when one is unreachable or drops the agent."
    )
    control_plane_url: str = Field(description="Base URL of the control plane (artifacts).")
    token: SecretStr = Field(description="Device token (edgefleet devices add).")
    trust_store: Path = Field(description="Trusted public keys (GET /api/v1/keys).")
    data_dir: Path = Field(description="Model store, outbox, accepted sequence.")
    labels: dict[str, str] = Field(default_factory=dict, description="Device labels.")
    api_host: str = Field(default="127.0.0.1", description="Local inference API address.")
    api_port: int = Field(default=8500, ge=0, le=65535, description="0 turns the API off.")
    api_metrics: bool = Field(
        default=False, description="Serve Prometheus /metrics on the local API."
    )
    window_seconds: float = Field(default=60.0, gt=0, description="Telemetry window length.")
    topic_root: str = Field(default=DEFAULT_ROOT, description="MQTT topic root.")
    tls_ca_file: Path | None = Field(
        default=None, description="Extra CA bundle trusted for mqtts and https artifact downloads."
    )
    tls_cert_file: Path | None = Field(default=None, description="Client certificate.")
    tls_key_file: Path | None = Field(default=None, description="Client key.")
    keepalive_seconds: int = Field(default=30, ge=5, le=3600)
    mqtt_subscribe_qos: int = Field(
        default=1,
        ge=0,
        le=1,
        description="QoS of the agent's subscriptions to its desired state and acks. 0 on a "
        "NATS cluster: there each QoS 1 subscription is a JetStream consumer, which can be "
        "granted after a node died and yet deliver nothing. Nothing is lost at 0: the desired "
        "state is retained and comes again with every (re)subscription, and telemetry whose "
        "ack is lost stays in the outbox, is sent again (outbox_resend_windows) and "
        "acknowledged again (stored once).",
    )
    mqtt_resubscribe_seconds: float = Field(
        default=0.0,
        ge=0,
        le=7 * 24 * 3600,
        description="Subscribe again to the desired (or ack) topic when it has brought "
        "nothing for this long while connected; 0: never. The broker sends the retained "
        "desired state again, which changes nothing when it is the one already accepted. A "
        "guard for broker clusters, where a subscription can stay granted but silent or miss "
        "a publish racing it (docs/broker-cluster.md).",
    )
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    outbox_max_messages: int = Field(default=10_000, ge=10, description="Outbox cap.")
    outbox_resend_windows: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Telemetry and samples not yet acknowledged are sent again every this "
        "many windows (and at every connect); each new one is sent once when made. A control "
        "plane that is behind is not sent the same windows again at every window.",
    )
    max_artifact_bytes: int = Field(
        default=DEFAULT_MAX_ARTIFACT_BYTES, ge=1, description="Download cap."
    )
    download_deadline_seconds: float = Field(default=900.0, gt=0)
    download_min_bytes_per_second: int = Field(
        default=16 * 1024, ge=0, description="Slower (after the grace time) aborts."
    )
    download_attempts: int = Field(default=5, ge=1, description="Tries per artifact.")
    download_grace_seconds: float = Field(
        default=10.0, gt=0, description="Stall timeout, and time before the speed rule."
    )
    probation_requests: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description="A new version served this many requests without failing is committed "
        "(judged); 0 judges by time alone.",
    )
    probation_seconds: float = Field(
        default=30.0,
        ge=0,
        le=7 * 24 * 3600,
        description="... or, at the latest, after this long (unjudged if fewer requests came); "
        "0 commits at once.",
    )
    probation_latency_budget_ms: float = Field(default=250.0, gt=0, le=3_600_000)
    probation_max_error_rate: float = Field(default=0.0, ge=0, le=1)
    sample_rate: float = Field(default=0.0, ge=0, le=1, description="Share of rows sampled.")
    samples_per_window: int = Field(default=100, ge=0, description="Cap on sampled rows.")

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        parse_broker_urls(value)
        return value

    @field_validator("control_plane_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("control_plane_url must be http:// or https://")
        return value.rstrip("/")

    @field_validator("data_dir", "trust_store")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def broker(self) -> BrokerAddress:
        """The first (or only) broker node."""
        return self.brokers[0]

    @property
    def brokers(self) -> tuple[BrokerAddress, ...]:
        """Every broker node, in the order they are tried."""
        return parse_broker_urls(self.broker_url)


def load_agent_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from ``config_file`` (TOML), env ``EDGEFLEET_AGENT_*`` and ``overrides``."""

    return load(AgentSettings, config_file, **overrides)


DEFAULT_CONFIG = """\
# edgefleet agent configuration. Environment variables EDGEFLEET_AGENT_<NAME> override it.
# The six keys marked "required" have no default; everything else does (shown as set here).

device_id = "dev-001"                          # required: ^[a-z0-9][a-z0-9-]{0,63}$
broker_url = "mqtt://127.0.0.1:1883"          # required; mqtts:// for TLS; logs in as device_id
#                                              # with token unless the URL says user:pass@;
#                                              # a broker cluster: "mqtt://b1:1883,mqtt://b2:1883"
#                                              # (the next node when one fails)
control_plane_url = "http://127.0.0.1:8000"    # required: artifacts and the sequence floor
token = "TOKEN"                                # required: device token (edgefleet devices add)
trust_store = "/etc/edgefleet/trust-store.json"   # required: GET /api/v1/keys, saved once
data_dir = "/var/lib/edgefleet-agent"          # required: models, outbox, accepted sequence
api_host = "127.0.0.1"                         # local inference API (0.0.0.0 exposes it)
api_port = 8500                                # 0 turns it off
# api_metrics = false                          # true: Prometheus /metrics on the local API
window_seconds = 60                            # telemetry window
# topic_root = "edgefleet/v1"
# tls_ca_file = "/etc/edgefleet/ca.pem"        # for mqtts:// and https:// artifacts
# tls_cert_file = "/etc/edgefleet/device.pem"  # client certificate, optional
# tls_key_file = "/etc/edgefleet/device.key"
# mqtt_subscribe_qos = 1                       # 0 on a NATS cluster (docs/broker-cluster.md)
# mqtt_resubscribe_seconds = 0                 # e.g. 300 on a broker cluster: subscribe again
#                                              # when a topic was silent this long (0: never)
# outbox_max_messages = 10000                  # oldest dropped (and counted) beyond this
# outbox_resend_windows = 5                    # unacknowledged ones are sent again this often
# max_artifact_bytes = 536870912               # 512 MiB download cap
# download_deadline_seconds = 900
# download_min_bytes_per_second = 16384        # after a 10 s grace
# probation_requests = 50                      # a new version is committed once it served this
# probation_seconds = 30                       # many requests without failing, or after this
#                                              # long, whichever comes first (0/0: at once)
# probation_latency_budget_ms = 250
# probation_max_error_rate = 0.0
# sample_rate = 0.0                            # share of rows sent for retraining (opt-in)

[labels]
site = "berlin"
hw = "rpi4"
"""
