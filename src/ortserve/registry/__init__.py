"""The model registry: SQLAlchemy tables, Alembic migrations, the model store and the registry service."""
