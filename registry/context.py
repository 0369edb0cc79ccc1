"""The registry's runtime objects, built once from settings by the app factory and injected into routes."""
from __future__ import annotations

from dataclasses import dataclass

from registry.db import Database, make_engine, migrate
from registry.settings import RegistrySettings
from registry.store import ArtifactStore, LocalArtifactStore


@dataclass
class Registry:
    settings: RegistrySettings
    db: Database
    store: ArtifactStore

    @classmethod
    def build(cls, settings: RegistrySettings, *, store: ArtifactStore | None = None) -> "Registry":
        settings.scratch_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url, pool_size=settings.db_pool_size)
        return cls(settings=settings, db=Database(engine),
                   store=store or LocalArtifactStore(settings.resolved_artifact_dir))

    def migrate(self) -> None:
        migrate(self.db.engine)

    def close(self) -> None:
        self.db.dispose()
