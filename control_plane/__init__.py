"""The edgefleet control plane. Importing this package imports no server dependency;
modules that need the ``server`` extra import it themselves."""
