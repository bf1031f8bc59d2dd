"""Good-till-date orders: ``expires_at``, the ``gtd`` time in force and the ``expired`` status.

Written by hand from ``app.market.models`` (``alembic check`` clean): the ``status`` and
``time_in_force`` CHECKs are widened, ``expires_at`` is set exactly for GTD orders, and a
partial index on ``expires_at`` serves the expiry task's scan of open GTD orders.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 20:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_GTD = "time_in_force = 'gtd' AND status IN ('open', 'partially_filled')"


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "market_orders",
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
    )
    op.drop_constraint(op.f("market_orders_status_check"), "market_orders", type_="check")
    op.create_check_constraint(
        op.f("market_orders_status_check"),
        "market_orders",
        "status IN ('open', 'partially_filled', 'filled', 'cancelled', 'expired')",
    )
    op.drop_constraint(op.f("market_orders_time_in_force_check"), "market_orders", type_="check")
    op.create_check_constraint(
        op.f("market_orders_time_in_force_check"),
        "market_orders",
        "time_in_force IN ('gtc', 'ioc', 'fok', 'gtd')",
    )
    op.create_check_constraint(
        op.f("market_orders_expires_at_check"),
        "market_orders",
        "(time_in_force = 'gtd') = (expires_at IS NOT NULL)",
    )
    op.create_index(
        "ix_market_orders_expires_at_open_gtd",
        "market_orders",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text(OPEN_GTD),
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # GTD orders cannot be represented before this revision: close them as cancelled first.
    op.execute("UPDATE market_orders SET status = 'cancelled' WHERE status = 'expired'")
    op.drop_index(
        "ix_market_orders_expires_at_open_gtd",
        table_name="market_orders",
        postgresql_where=sa.text(OPEN_GTD),
    )
    op.drop_constraint(op.f("market_orders_expires_at_check"), "market_orders", type_="check")
    op.drop_constraint(op.f("market_orders_time_in_force_check"), "market_orders", type_="check")
    op.execute("UPDATE market_orders SET time_in_force = 'gtc' WHERE time_in_force = 'gtd'")
    op.create_check_constraint(
        op.f("market_orders_time_in_force_check"),
        "market_orders",
        "time_in_force IN ('gtc', 'ioc', 'fok')",
    )
    op.drop_constraint(op.f("market_orders_status_check"), "market_orders", type_="check")
    op.create_check_constraint(
        op.f("market_orders_status_check"),
        "market_orders",
        "status IN ('open', 'partially_filled', 'filled', 'cancelled')",
    )
    op.drop_column("market_orders", "expires_at")
