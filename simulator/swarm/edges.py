"""Edge brokers: devices on several mosquittos, each bridged to the control plane's broker
(the central one), as a fleet of sites with a broker each would run. Every device channel
crosses the bridge at QoS 1: ``desired`` and ``ack`` in, the device's reports out.

What a bridge needs, found by running one (mosquitto 2.0.11):
- the edge's ``check_retain_source false``: with ``true`` (``deploy/``'s default) the edge
  checks a retained message against the ACL of the client that published it, and a bridge
  has none there, so no device would get its retained desired state on connecting;
- an account of its own on the central broker's control-plane listener, allowed to read
  and write the whole topic root, as the control plane is.
Given each edge's devices, an edge subscribes to their ``desired`` and ``ack`` topics one
by one, so the central broker sends each desired state to the one edge that needs it.
Without them (topic filters cannot tell one site's device ids from another's), a desired
state reaches every edge: at 100,000 devices on seven, seven copies of each, and every
edge's database held all 100,000 (170 MB rewritten at each save).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from shared.topics import Channel, Topics
from simulator.broker import MosquittoBroker

INWARD = (Channel.DESIRED, Channel.ACK)
OUTWARD = (Channel.STATE, Channel.ONLINE, Channel.TELEMETRY, Channel.SAMPLES)


def bridge_config(
    name: str,
    central: MosquittoBroker,
    password: str,
    topics: Topics,
    devices: list[str] | None = None,
) -> str:
    """The ``connection`` section of an edge bridged to ``central``'s control-plane port;
    ``devices``: the only ones whose ``desired`` and ``ack`` come in (None: all)."""
    lines = [
        f"connection {name}",
        f"address {central.host}:{central.cp_port}",
        f"remote_username {name}",
        f"remote_password {password}",
        f"remote_clientid {name}",
        f"local_clientid {name}-local",
        "bridge_protocol_version mqttv311",
    ]
    if devices is None:
        lines += [f"topic {topics.all_devices(c)} in 1" for c in INWARD]
    else:
        lines += [f"topic {topics.device(d, c)} in 1" for d in devices for c in INWARD]
    lines += [f"topic {topics.all_devices(c)} out 1" for c in OUTWARD]
    return "\n" + "\n".join(lines) + "\n"


class EdgeBrokers:
    """``count`` mosquittos for devices, bridged to ``central`` (which must use a password
    file: its ``auth`` is ``passwd``); ``devices``: each edge's, when known beforehand."""

    def __init__(
        self,
        central: MosquittoBroker,
        workdir: Path,
        count: int,
        *,
        topics: Topics | None = None,
        options: dict[str, str] | None = None,
        devices: list[list[str]] | None = None,
    ) -> None:
        topics = topics or Topics()
        self.brokers: list[MosquittoBroker] = []
        grants = []
        for i in range(count):
            name, password = f"edge-{i + 1}", secrets.token_hex(16)
            central.add_control_plane_user(password, username=name)
            grants.append(f"\nuser {name}\ntopic readwrite {topics.root}/#\n")
            self.brokers.append(
                MosquittoBroker(
                    workdir / name,
                    options={**(options or {}), "check_retain_source": "false"},
                    extra_config=bridge_config(
                        name, central, password, topics, devices[i] if devices else None
                    ),
                )
            )
        with central.acl_file.open("a") as acl:
            acl.writelines(grants)
        if central.running:
            central.reload()

    def start(self) -> None:
        for broker in self.brokers:
            broker.start()

    def stop(self, timeout: float = 10.0) -> None:
        for broker in self.brokers:
            broker.stop(timeout)

    def drops(self) -> int:
        """Times an edge logged dropping messages for a client (its queue was full)."""
        return sum(b.log_text().count("Outgoing messages are being dropped") for b in self.brokers)
