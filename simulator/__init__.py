"""Runs many real agents in one process, and the demo."""
