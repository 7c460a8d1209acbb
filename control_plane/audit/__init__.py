"""The audit log: what happened to rollouts, devices and models; event types and their
payloads (pure), and recording an event."""
