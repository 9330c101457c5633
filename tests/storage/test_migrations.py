"""Migrations, not create_all: the schema they build matches the models, up and down."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage import db as storage_db
from storage.models import Base


def test_migrated_schema_matches_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_is_migrated_reports_head(engine):
    assert storage_db.is_migrated(engine)
    assert storage_db.current_revision(engine) == storage_db.head_revision()


def test_downgrade_to_base_and_back(tmp_path):
    engine = storage_db.make_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    storage_db.upgrade(engine)
    storage_db.downgrade(engine, "base")
    assert inspect(engine).get_table_names() == ["alembic_version"]
    assert not storage_db.is_migrated(engine)
    storage_db.upgrade(engine)
    assert storage_db.is_migrated(engine)
