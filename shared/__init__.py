"""What the control plane and the agent must agree on. Pure: no I/O, no imports of
``control_plane``, ``agent`` or ``simulator``."""
