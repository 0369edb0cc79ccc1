"""expert_versions.description: the list query reads a column, never the stored manifest JSON.

Listing used to extract ``manifest->description`` inside the database, so one manifest the database could not
parse (NaN on SQLite) broke ``GET /v1/experts`` for every caller. The description is now copied into a column
at publish time (capped at 4,096 characters by the manifest check); existing rows are backfilled here.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MAX_DESCRIPTION_CHARS = 4096   # expertmesh.expert.manifest.MAX_DESCRIPTION_CHARS when this was written


def upgrade() -> None:
    op.add_column("expert_versions", sa.Column("description", sa.Text(), nullable=False, server_default=""))
    versions = sa.table("expert_versions", sa.column("id", sa.Integer()), sa.column("manifest", sa.JSON()),
                        sa.column("description", sa.Text()))
    conn = op.get_bind()
    for row_id, manifest in conn.execute(sa.select(versions.c.id, versions.c.manifest)).all():
        text = manifest.get("description") if isinstance(manifest, dict) else None
        if isinstance(text, str) and text:
            clean = text.replace("\x00", "")[:MAX_DESCRIPTION_CHARS]
            conn.execute(versions.update().where(versions.c.id == row_id).values(description=clean))


def downgrade() -> None:
    with op.batch_alter_table("expert_versions") as batch:
        batch.drop_column("description")
