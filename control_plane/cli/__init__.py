"""The control plane's commands (``init``, ``server`` and the API client commands), loaded lazily
by ``edgefleet.cli``."""
