"""After a rollout: drift math and the per-model policy (pure), and the monitor that judges
buckets, triggers retraining and releases challengers."""
