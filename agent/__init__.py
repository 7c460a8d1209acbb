"""The edgefleet device agent. Depends on the base install only (never on ``control_plane``)."""
