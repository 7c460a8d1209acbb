"""Cancellation that survives the MQTT client library (used by the agent's session and the
control plane's bridge)."""

from __future__ import annotations

import asyncio


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Re-raise a cancellation that got lost: Python 3.11's ``asyncio.wait_for`` (which aiomqtt
    awaits its CONNACK/SUBACK/PUBACK with) can swallow a cancel that lands as the awaited
    reply arrives, and an MqttError raised while disconnecting can replace it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
