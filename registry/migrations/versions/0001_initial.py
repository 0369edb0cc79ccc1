"""Initial registry schema: owners, tokens, experts, versions, files, tags, compositions, change feed, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("name", name="uq_owners_name"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("owners.id", name="fk_tokens_owner_id"), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    op.create_index("ix_tokens_owner_id", "tokens", ["owner_id"])
    op.create_table(
        "experts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("owners.id", name="fk_experts_owner_id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("status_changed_at", TS, nullable=True),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("name", name="uq_experts_name"),
    )
    op.create_index("ix_experts_owner_id", "experts", ["owner_id"])
    op.create_index("ix_experts_status", "experts", ["status"])
    op.create_table(
        "expert_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("expert_id", sa.Integer(), sa.ForeignKey("experts.id", name="fk_expert_versions_expert_id"),
                  nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("base_fingerprint", sa.String(128), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("status_changed_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("expert_id", "version", name="uq_expert_versions_version"),
        sa.UniqueConstraint("expert_id", "identity", name="uq_expert_versions_identity"),
    )
    op.create_table(
        "expert_files",
        sa.Column("version_id", sa.Integer(),
                  sa.ForeignKey("expert_versions.id", name="fk_expert_files_version_id"), primary_key=True),
        sa.Column("filename", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_expert_files_sha256", "expert_files", ["sha256"])
    op.create_table(
        "expert_tags",
        sa.Column("expert_id", sa.Integer(), sa.ForeignKey("experts.id", name="fk_expert_tags_expert_id"),
                  primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_expert_tags_tag", "expert_tags", ["tag"])
    op.create_table(
        "compositions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("owners.id", name="fk_compositions_owner_id"),
                  nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("name", name="uq_compositions_name"),
    )
    op.create_index("ix_compositions_owner_id", "compositions", ["owner_id"])
    op.create_table(
        "composition_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("composition_id", sa.Integer(),
                  sa.ForeignKey("compositions.id", name="fk_composition_versions_composition_id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("router_type", sa.String(64), nullable=False),
        sa.Column("base_fingerprint", sa.String(128), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("document_sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("composition_id", "version", name="uq_composition_versions_version"),
        sa.UniqueConstraint("composition_id", "identity", name="uq_composition_versions_identity"),
    )
    op.create_table(
        "composition_files",
        sa.Column("version_id", sa.Integer(),
                  sa.ForeignKey("composition_versions.id", name="fk_composition_files_version_id"),
                  primary_key=True),
        sa.Column("filename", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_composition_files_sha256", "composition_files", ["sha256"])
    op.create_table(
        "composition_members",
        sa.Column("version_id", sa.Integer(),
                  sa.ForeignKey("composition_versions.id", name="fk_composition_members_version_id"),
                  primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("expert_name", sa.String(64), nullable=False),
        sa.Column("expert_version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_composition_members_expert_name", "composition_members", ["expert_name"])
    op.create_table(
        "changes",
        sa.Column("revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=False),
        sa.Column("subject_name", sa.String(64), nullable=False),
        sa.Column("subject_version", sa.Integer(), nullable=True),
        sa.Column("subject_owner_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_log_subject", "audit_log", ["subject_type", "subject_name"])
    op.create_index("ix_audit_log_subject_owner_id", "audit_log", ["subject_owner_id"])
    state = op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    for table in ("registry_state", "audit_log", "changes", "composition_members", "composition_files",
                  "composition_versions", "compositions", "expert_tags", "expert_files", "expert_versions",
                  "experts", "tokens", "owners"):
        op.drop_table(table)
