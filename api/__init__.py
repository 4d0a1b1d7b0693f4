"""api: the service (CLI, REST API, Prometheus metrics, dashboard)."""
