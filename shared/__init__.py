"""What the control plane and the agent must agree on (wire messages, manifests, signatures,
statistics), and the few helpers both use alike (broker addresses, cancellation, settings
loading). No imports of ``control_plane``, ``agent`` or ``simulator``; no I/O but reading
a settings file."""
