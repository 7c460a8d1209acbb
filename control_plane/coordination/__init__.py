"""Several control-plane processes on one PostgreSQL: leadership and heartbeats."""
