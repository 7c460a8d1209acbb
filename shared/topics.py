"""Every MQTT topic string is built here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_ROOT = "edgefleet/v1"
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class Channel(StrEnum):
    """The last topic level under ``{root}/devices/{id}/``."""

    DESIRED = "desired"  # CP → device, retained: signed desired state
    STATE = "state"  # device → CP, retained: what the device serves
    ONLINE = "online"  # device → CP, retained, also the Last Will
    TELEMETRY = "telemetry"  # device → CP: closed telemetry windows
    SAMPLES = "samples"  # device → CP: opt-in sampled rows
    ACK = "ack"  # CP → device: sequence numbers stored durably


def is_device_id(value: str) -> bool:
    return bool(DEVICE_ID_RE.fullmatch(value))


@dataclass(frozen=True)
class Topics:
    """Topic builder for one topic root."""

    root: str = DEFAULT_ROOT

    def device(self, device_id: str, channel: Channel) -> str:
        if not is_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}")
        return f"{self.root}/devices/{device_id}/{channel.value}"

    def all_devices(self, channel: Channel) -> str:
        """Subscription filter for one channel of every device."""
        return f"{self.root}/devices/+/{channel.value}"

    def shared(self, group: str, topic_filter: str) -> str:
        """A shared subscription (``$share/group/filter``): replicas split the messages."""
        return f"$share/{group}/{topic_filter}"

    def parse(self, topic: str) -> tuple[str, Channel] | None:
        """``(device_id, channel)`` of a device topic under this root, else ``None``."""
        prefix = f"{self.root}/devices/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or not is_device_id(parts[0]):
            return None
        try:
            return parts[0], Channel(parts[1])
        except ValueError:
            return None
