"""Where an MQTT broker is and how to log in: parsed from an ``mqtt://`` or ``mqtts://`` URL,
or from several separated by commas (the nodes of one broker cluster, tried in order; used
by the agent and by the control plane's bridge)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# The control plane's broker account (several replicas share it, each with its own client
# id); device ids starting with "edgefleet-" are refused, so no device can be named so.
CONTROL_PLANE_USER = "edgefleet-control-plane"
MAX_BROKER_NODES = 16


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_broker_url(url: str, name: str = "broker_url") -> BrokerAddress:
    """``mqtt://user:pass@host:port`` or ``mqtts://…`` (TLS; default port 8883)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise ValueError(f"{name} has a bad port (a number up to 65535)") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{name} must look like mqtt://user:pass@host:1883 or mqtts://…")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def parse_broker_urls(value: str, name: str = "broker_url") -> tuple[BrokerAddress, ...]:
    """One broker URL, or the nodes of a broker cluster separated by commas
    (``mqtt://h1:1883,mqtt://h2:1883``): a client connects to the first and moves to the
    next when one is unreachable or drops it. Errors name the entry, never echo it (a URL
    may hold a password)."""
    entries = [entry.strip() for entry in value.split(",")]
    if len(entries) > MAX_BROKER_NODES:
        raise ValueError(f"{name} names {len(entries)} brokers; at most {MAX_BROKER_NODES}")
    addresses: list[BrokerAddress] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{name} entry {number} of {len(entries)}" if len(entries) > 1 else name
        if not entry:
            raise ValueError(
                f"{where} is empty" + (" (a stray comma?)" if len(entries) > 1 else "")
            )
        address = parse_broker_url(entry, where)
        if any((a.host, a.port) == (address.host, address.port) for a in addresses):
            raise ValueError(f"{where} repeats {address.host}:{address.port}")
        addresses.append(address)
    if len({a.tls for a in addresses}) > 1:
        raise ValueError(f"{name} mixes mqtt:// and mqtts://: use TLS on every node or none")
    return tuple(addresses)
