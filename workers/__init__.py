"""The Celery worker fleet: ingest, consolidation, archival and lifecycle (not yet built)."""

__all__: list[str] = []
