"""Persistence for carepulse: SQLAlchemy models, the engine, migrations and repositories.

Nothing in this package knows about Flask, HTTP or SMS providers.
"""
