"""An MQTT client whose reading can pause: flow control for the control plane's inbound
connection.

paho acknowledges (PUBACK) each message as it reads it, and aiomqtt queues what paho read
without bound, so a control plane behind a flood of device messages held the whole flood in
its memory (4.9 GB at 100,000 devices) and spent its event loop reading instead of storing.
Paused, the rest waits at the broker, which keeps it for this session within its own bounds
(mosquitto's ``max_queued_messages`` / ``max_queued_bytes``). Nothing published on this
connection waits for a PUBACK while it is paused: the bridge publishes on a second one.
Paused past the keepalive (ingest held up that long: the database down), paho drops the
connection and the bridge connects again; what was read and not parsed goes with it and
comes again: device states are retained, telemetry waits in the devices' outboxes.

aiomqtt 2.x registers its socket reader inside ``_on_socket_open`` without keeping it; this
subclass registers the same reader (paho's ``loop_read``, and SSL's pending bytes, as
aiomqtt does) and keeps it to add again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt


class PausableClient(aiomqtt.Client):
    paused = False
    _reader: Callable[[], None] | None = None
    _fd = -1

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        def read() -> None:
            try:
                while True:
                    client.loop_read()
                    pending = getattr(client._sock, "pending", None)
                    if pending is None or pending() <= 0:
                        break
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def open_() -> None:
            self._reader, self._fd, self.paused = read, sock.fileno(), False
            self._loop.add_reader(self._fd, read)
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the thread that connects (aiomqtt's executor).
        self._loop.call_soon_threadsafe(open_)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._reader, self._fd = None, -1
        super()._on_socket_close(client, userdata, sock)

    def pause_reading(self) -> None:
        """Read nothing more from the socket until ``resume_reading``."""
        if not self.paused and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self.paused = True

    def resume_reading(self) -> None:
        if self.paused and self._reader is not None and self._fd >= 0:
            self._loop.add_reader(self._fd, self._reader)
        self.paused = False

    @property
    def backlog(self) -> int:
        """Messages read from the socket and not yet taken from ``messages``."""
        return len(self.messages)


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Return never; raise ``aiomqtt.MqttError`` once ``client`` is disconnected (a client
    that subscribes to nothing: its message iterator ends only with the connection)."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("disconnected")
