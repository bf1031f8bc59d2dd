"""Auction series (the tender calendar): ``auction_series`` and ``auctions.series_id``.

A series holds an auction template (format, supply per auction, rules) and a weekly schedule
(ISO weekdays, a daily window in Asia/Tokyo, how many days ahead to create). The scheduler
creates each auction once: ``UNIQUE (series_id, opens_at)`` on ``auctions`` (NULLs, the
auctions created on their own, never collide).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 20:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "auction_series",
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("format", sa.String(length=20), nullable=False),
        sa.Column("created_by_organization_id", sa.UUID(), nullable=False),
        sa.Column("supply", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("rules", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("weekdays", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("opens_time", sa.Time(), nullable=False),
        sa.Column("closes_time", sa.Time(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.CheckConstraint(
            "format IN ('uniform', 'pay_as_bid')", name=op.f("auction_series_format_check")
        ),
        sa.CheckConstraint("closes_time > opens_time", name=op.f("auction_series_window_check")),
        sa.CheckConstraint("horizon_days > 0", name=op.f("auction_series_horizon_days_check")),
        sa.CheckConstraint(
            "cardinality(weekdays) > 0 AND weekdays <@ ARRAY[1, 2, 3, 4, 5, 6, 7]",
            name=op.f("auction_series_weekdays_check"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_organization_id"],
            ["organizations.id"],
            name=op.f("auction_series_created_by_organization_id_fkey"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("auction_series_pkey")),
    )
    op.create_index(
        op.f("ix_auction_series_created_by_organization_id"),
        "auction_series",
        ["created_by_organization_id"],
        unique=False,
    )
    op.add_column("auctions", sa.Column("series_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("auctions_series_id_fkey"),
        "auctions",
        "auction_series",
        ["series_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_unique_constraint(
        op.f("auctions_series_id_opens_at_key"), "auctions", ["series_id", "opens_at"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("auctions_series_id_opens_at_key"), "auctions", type_="unique")
    op.drop_constraint(op.f("auctions_series_id_fkey"), "auctions", type_="foreignkey")
    op.drop_column("auctions", "series_id")
    op.drop_index(op.f("ix_auction_series_created_by_organization_id"), table_name="auction_series")
    op.drop_table("auction_series")
