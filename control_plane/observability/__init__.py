"""What an operator watches: Prometheus metrics of the fleet, rollouts, ingest, drift and
the API, and the control plane's own logs (text or JSON, with device, rollout, model and
version as fields)."""
