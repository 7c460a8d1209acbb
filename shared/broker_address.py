"""Where an MQTT broker is and how to log in: parsed from an ``mqtt://`` or ``mqtts://`` URL
(used by the agent and by the control plane's bridge)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# The control plane's broker account (several replicas share it, each with its own client
# id); device ids starting with "edgefleet-" are refused, so no device can be named so.
CONTROL_PLANE_USER = "edgefleet-control-plane"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://user:pass@host:port`` or ``mqtts://…`` (TLS; default port 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("broker_url must look like mqtt://user:pass@host:1883 or mqtts://…")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )
