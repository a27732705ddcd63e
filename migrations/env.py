"""Alembic environment: the schema is shared.db.models' metadata, the URL comes from the settings."""

from __future__ import annotations

from alembic import context

from shared.db.models import Base
from shared.db.session import make_engine
from shared.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # An explicit URL (tests pass one through the Alembic config) wins over the environment.
    return config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(Settings(database_url=_url()))
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # Batch mode alters a SQLite table by copying it and dropping the old one: with foreign keys
            # on, dropping the old copy of a parent table (tenants) cascade-deleted its children's rows.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        # Batch mode lets later migrations alter tables on SQLite too.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
