"""Job state in a relational database (SQLite embedded, Postgres in production); schema by Alembic."""
