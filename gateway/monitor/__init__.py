"""Watching the running gateway: what the operator sees of jobs (:mod:`.jobs`), the
destinations' echo monitor, health, Prometheus metrics and the alerts sent to people."""
