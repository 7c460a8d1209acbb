"""A protocol-level device swarm: many MQTT device sessions in one asyncio process that speak
the device side of the wire protocol exactly (desired states verified with the agent's own
checks, state reports with the agent's transitions, telemetry windows with its outbox
rules) but download and run no model: the artifact counts as cached. It measures the
control plane and the broker at 10,000–100,000 devices; every figure it produces is
labelled "swarm". End-to-end claims keep using real agents (``simulator.fleet``)."""
