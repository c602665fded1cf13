"""The launchers: the `distillery` CLI, `up`/`demo`, the embedded PostgreSQL/Redis and the supervisor."""
