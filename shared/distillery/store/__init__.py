"""PostgreSQL persistence: ORM models, sessions, migrations and the queries services share."""
