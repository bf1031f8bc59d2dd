"""Where the database is (configured, or embedded) and bringing its schema to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app.config import Settings, get_settings
from app.db.embedded import EmbeddedPostgres, start_embedded

ROOT = Path(__file__).resolve().parents[2]


# The embedded server this process started, if any (so the command that started it can stop it).
EMBEDDED: list[EmbeddedPostgres] = []


def resolve_database_url(settings: Settings | None = None) -> str:
    """The configured database, or the embedded one (started if needed) in ``data_dir``."""
    settings = settings or get_settings()
    if settings.database.url:
        return settings.database.url
    server = start_embedded(settings.data_dir)
    EMBEDDED.append(server)
    settings.database.url = server.url
    return server.url


def stop_embedded() -> None:
    while EMBEDDED:
        EMBEDDED.pop().stop()


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logging"] = False
    if url is not None:
        config.attributes["database_url"] = url
    return config


def upgrade_to_head(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())
