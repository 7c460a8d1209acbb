"""Staged rollouts: the pure state machine, plans and gates, and the engine that drives them."""
