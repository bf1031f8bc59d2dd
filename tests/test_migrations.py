"""Migrations: the whole chain goes up, down to nothing, and up again on a fresh database, and
the models describe exactly the schema the migrations build (``alembic check``).

Runs on its own database (not the per-worker test database the other tests share). Alembic's
environment starts an event loop of its own, so each Alembic command runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import app.db.registry  # noqa: F401  (every model, as migrations/env.py loads them)
from app.db.base import Base
from app.db.runtime import alembic_config
from app.db.url import async_url, libpq_url

T = TypeVar("T")

# A database's own objects: after ``downgrade base`` there must be none. Objects that belong to
# an extension (btree_gist's operator support functions, say) are the extension's, not ours:
# a migration may leave an extension installed.
NOT_FROM_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass
                                  AND d.objid = {oid} AND d.deptype = 'e')"""
SCHEMA_SQL = {
    # Alembic's own table is left out: at base it is there (empty), before any upgrade it is not.
    "relations": f"""SELECT c.relname || ':' || c.relkind::text FROM pg_class c
                      JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema()
                       AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
                       AND {NOT_FROM_EXTENSION.format(catalog="pg_class", oid="c.oid")}""",
    "functions": f"""SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = current_schema()
                       AND {NOT_FROM_EXTENSION.format(catalog="pg_proc", oid="p.oid")}""",
    "types": f"""SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE n.nspname = current_schema()
                   AND {NOT_FROM_EXTENSION.format(catalog="pg_type", oid="t.oid")}
                   AND (t.typtype IN ('e', 'd', 'r', 'm')
                        OR (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_class c
                                                        WHERE c.oid = t.typrelid
                                                          AND c.relkind = 'c')))""",
    "triggers": """SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema() AND NOT t.tgisinternal""",
}


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` where no event loop is running (Alembic's env.py calls ``asyncio.run``)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(libpq_url(os.environ["TANSO_TEST_DATABASE_URL"]))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _schema(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        return {
            name: {str(r[0]) for r in await conn.fetch(sql)} for name, sql in SCHEMA_SQL.items()
        }
    finally:
        await conn.close()


def schema(url: str) -> dict[str, set[str]]:
    return in_thread(lambda: asyncio.run(_schema(url)))


@pytest.fixture
def fresh_database_url(worker_id: str) -> Iterator[str]:
    name = f"tanso_migrations_{worker_id}"
    base = os.environ["TANSO_TEST_DATABASE_URL"]

    def run(sql: str) -> None:
        in_thread(lambda: asyncio.run(_admin(sql)))

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(url: str, target: str = "head") -> None:
    in_thread(lambda: command.upgrade(alembic_config(url), target))


def downgrade(url: str, target: str = "base") -> None:
    in_thread(lambda: command.downgrade(alembic_config(url), target))


def autogenerate_diffs(url: str) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write: models versus database."""
    from app.worker.schema import include_name

    def compare() -> list[Any]:
        async def go() -> list[Any]:
            engine = create_async_engine(async_url(url))
            try:
                async with engine.connect() as conn:

                    def diff(sync_conn: Connection) -> list[Any]:
                        context = MigrationContext.configure(
                            sync_conn, opts={"compare_type": True, "include_name": include_name}
                        )
                        return list(compare_metadata(context, Base.metadata))

                    return await conn.run_sync(diff)
            finally:
                await engine.dispose()

        return asyncio.run(go())

    return in_thread(compare)


class TestMigrationChain:
    def test_upgrade_downgrade_upgrade(self, fresh_database_url: str) -> None:
        url = fresh_database_url
        upgrade(url)
        built = schema(url)
        assert {"ledger_accounts:r", "ledger_postings:r", "ledger_entries:r"} <= built["relations"]
        assert "ledger_post_entries" in built["functions"]
        assert {
            "ledger_entries_balanced",
            "ledger_postings_same_transaction",
            "ledger_postings_append_only",
            "ledger_entries_append_only",
        } <= built["triggers"]

        downgrade(url)
        emptied = schema(url)
        assert emptied["relations"] == set()
        assert emptied["functions"] == set()
        assert emptied["types"] == set()
        assert emptied["triggers"] == set()

        upgrade(url)
        assert schema(url) == built

    def test_each_downgrade_undoes_its_upgrade(self, fresh_database_url: str) -> None:
        """Up one revision at a time, then down one at a time: each step back restores exactly
        the schema the database had before that revision."""
        url = fresh_database_url
        revisions = [
            r.revision
            for r in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
        ]
        before = {revisions[0]: schema(url)}
        for previous, revision in itertools.pairwise(revisions):
            upgrade(url, previous)
            before[revision] = schema(url)
        upgrade(url, revisions[-1])
        for revision in reversed(revisions):
            downgrade(url, "-1")
            assert schema(url) == before[revision], f"downgrade of {revision}"


class TestModelsMatchMigrations:
    def test_no_autogenerate_diffs(self, fresh_database_url: str) -> None:
        upgrade(fresh_database_url)
        assert autogenerate_diffs(fresh_database_url) == []

    def test_alembic_check(self, fresh_database_url: str) -> None:
        upgrade(fresh_database_url)
        in_thread(lambda: command.check(alembic_config(fresh_database_url)))


# --- 0014: bid outcomes derived, not stored ------------------------------------------------


async def _run(url: str, statements: list[str], fetch: str | None) -> list[Any]:
    conn = await asyncpg.connect(libpq_url(url))
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
        return [] if fetch is None else [tuple(r) for r in await conn.fetch(fetch)]
    finally:
        await conn.close()


def run_sql(url: str, *statements: str, fetch: str | None = None) -> list[Any]:
    """Run ``statements`` in one transaction, then ``fetch`` (rows as tuples)."""
    return in_thread(lambda: asyncio.run(_run(url, list(statements), fetch)))


def version(url: str) -> str:
    (row,) = run_sql(url, fetch="SELECT version_num FROM alembic_version")
    return str(row[0])


HEX = "ab" * 32
SELLER, BIDDER = "00000000-0000-7000-8000-0000000000a1", "00000000-0000-7000-8000-0000000000b1"
SETTLED, CANCELLED, OPEN = (
    "00000000-0000-7000-8000-00000000a001",
    "00000000-0000-7000-8000-00000000a002",
    "00000000-0000-7000-8000-00000000a003",
)
# bid id → (auction, status stored at 0013, allocated)
BIDS_0013 = {
    "00000000-0000-7000-8000-00000000b001": (SETTLED, "won", True),
    "00000000-0000-7000-8000-00000000b002": (SETTLED, "lost", False),
    "00000000-0000-7000-8000-00000000b003": (SETTLED, "withdrawn", False),
    "00000000-0000-7000-8000-00000000b004": (SETTLED, "won", True),
    "00000000-0000-7000-8000-00000000b005": (CANCELLED, "lost", False),
    "00000000-0000-7000-8000-00000000b006": (OPEN, "active", False),
    "00000000-0000-7000-8000-00000000b007": (OPEN, "withdrawn", False),
}


def _auction_sql(auction_id: str, status: str) -> str:
    return (
        "INSERT INTO auctions (id, title, format, status, created_by_organization_id, opens_at,"
        " closes_at, supply_quantity, min_bid_quantity, quantity_step, price_tick, tie_break,"
        " undersubscribed, reserve_commitment, reserve_nonce, seed_commitment, seed, seed_nonce,"
        " created_at, updated_at) VALUES"
        f" ('{auction_id}', 'legacy', 'uniform', '{status}', '{SELLER}', now() - interval '2 h',"
        f" now() + interval '2 h', 100, 1, 1, 1, 'pro_rata', 'cancel', '{HEX}', '{HEX}',"
        f" '{HEX}', '{HEX}', '{HEX}', now(), now())"
    )


def _bid_sql(n: int, bid_id: str, auction_id: str, status: str, allocated: bool) -> list[str]:
    """A bid as 0013 stored it: its own hold, and its allocation if it won."""
    hold = f"00000000-0000-7000-8000-00000000c{n:03d}"
    # An active bid's hold is still held; any other bid's was settled or released.
    hold_status, remaining = ("active", 1000) if status == "active" else ("closed", 0)
    out = [
        "INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,"
        f" reference, created_at, updated_at) VALUES ('{hold}', '{BIDDER}', 'JPY', 1000,"
        f" {remaining}, '{hold_status}', 'auction:{auction_id}:bid:{bid_id}',"
        " now(), now())",
        "INSERT INTO auction_bids (id, auction_id, bidder_organization_id, price, quantity, status,"
        ' cash_hold_id, commitment, nonce, "group", amendments, created_at, updated_at) VALUES'
        f" ('{bid_id}', '{auction_id}', '{BIDDER}', 100, 10, '{status}', '{hold}', '{HEX}',"
        f" '{HEX}', NULL, 0, now(), now())",
    ]
    if allocated:
        out.append(
            "INSERT INTO auction_allocations (id, auction_id, bid_id, bidder_organization_id,"
            " quantity, price, amount, tie_selected) VALUES"
            f" ('00000000-0000-7000-8000-00000000d{n:03d}', '{auction_id}', '{bid_id}',"
            f" '{BIDDER}', 10, 100, 1000, false)"
        )
    return out


def seed_0013(url: str, bids: dict[str, tuple[str, str, bool]]) -> None:
    statements = [
        "INSERT INTO organizations (id, name, kind, status, created_at, updated_at) VALUES"
        f" ('{SELLER}', 'Seller', 'government', 'active', now(), now()),"
        f" ('{BIDDER}', 'Bidder', 'company', 'active', now(), now())",
        _auction_sql(SETTLED, "settled"),
        _auction_sql(CANCELLED, "cancelled"),
        _auction_sql(OPEN, "open"),
    ]
    for n, (bid_id, (auction_id, status, allocated)) in enumerate(bids.items(), 1):
        statements += _bid_sql(n, bid_id, auction_id, status, allocated)
    run_sql(url, *statements)


def bid_statuses(url: str) -> dict[str, str]:
    return {
        str(bid_id): str(status)
        for bid_id, status in run_sql(url, fetch="SELECT id, status FROM auction_bids")
    }


class TestBidOutcomesMigration:
    """0014 turns stored won/lost into ``active`` (the outcome is derived from the
    allocations), narrows the status check, and its downgrade writes won/lost back."""

    def test_upgrade_derives_and_downgrade_restores(self, fresh_database_url: str) -> None:
        url = fresh_database_url
        upgrade(url, "0013")
        seed_0013(url, BIDS_0013)
        stored = {bid_id: status for bid_id, (_, status, _) in BIDS_0013.items()}
        assert bid_statuses(url) == stored

        upgrade(url, "0014")
        assert version(url) == "0014"
        assert bid_statuses(url) == {
            bid_id: "active" if status in ("won", "lost") else status
            for bid_id, status in stored.items()
        }
        won = next(b for b, (_, s, _) in BIDS_0013.items() if s == "won")
        with pytest.raises(asyncpg.CheckViolationError):
            run_sql(url, f"UPDATE auction_bids SET status = 'won' WHERE id = '{won}'")
        with pytest.raises(asyncpg.CheckViolationError):
            run_sql(url, f"UPDATE auction_bids SET status = 'lost' WHERE id = '{won}'")
        # Nothing else about the bids or their holds changed.
        assert run_sql(url, fetch="SELECT count(*) FROM auction_allocations") == [(2,)]

        downgrade(url, "0013")
        assert version(url) == "0013"
        assert bid_statuses(url) == stored
        # 0013's check takes won/lost again.
        run_sql(url, f"UPDATE auction_bids SET status = 'lost' WHERE id = '{won}'")

    @pytest.mark.parametrize(
        "bad",
        [("won", False), ("lost", True)],
        ids=["won without an allocation", "lost with an allocation"],
    )
    def test_upgrade_refuses_won_and_allocations_that_disagree(
        self, fresh_database_url: str, bad: tuple[str, bool]
    ) -> None:
        url = fresh_database_url
        upgrade(url, "0013")
        bids = dict(BIDS_0013)
        bids["00000000-0000-7000-8000-00000000b0ff"] = (SETTLED, *bad)
        seed_0013(url, bids)
        before = bid_statuses(url)
        with pytest.raises(Exception, match="won/lost disagree with auction_allocations"):
            upgrade(url, "0014")
        # The whole upgrade rolled back: still 0013, every stored status kept.
        assert version(url) == "0013"
        assert bid_statuses(url) == before
        assert run_sql(
            url,
            fetch="SELECT count(*) FROM pg_proc WHERE proname = 'ledger_hold_add'",
        ) == [(0,)]

    def test_downgrade_refuses_once_bids_shared_a_settled_hold(
        self, fresh_database_url: str
    ) -> None:
        """0013 needs one hold per bid: even settled, two bids that shared a (closed) hold
        cannot go back, so the downgrade refuses, whole."""
        url = fresh_database_url
        upgrade(url, "0014")
        shared = "00000000-0000-7000-8000-00000000c0aa"
        won, lost = "00000000-0000-7000-8000-00000000b0a1", "00000000-0000-7000-8000-00000000b0a2"
        run_sql(
            url,
            "INSERT INTO organizations (id, name, kind, status, created_at, updated_at) VALUES"
            f" ('{SELLER}', 'Seller', 'government', 'active', now(), now()),"
            f" ('{BIDDER}', 'Bidder', 'company', 'active', now(), now())",
            _auction_sql(SETTLED, "settled"),
            "INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,"
            f" reference, created_at, updated_at) VALUES ('{shared}', '{BIDDER}', 'JPY', 2000,"
            f" 0, 'closed', 'auction:{SETTLED}:bidder:{BIDDER}', now(), now())",
            "INSERT INTO auction_bids (id, auction_id, bidder_organization_id, price, quantity,"
            ' status, cash_hold_id, commitment, nonce, "group", amendments, created_at,'
            f" updated_at) VALUES ('{won}', '{SETTLED}', '{BIDDER}', 100, 10, 'active',"
            f" '{shared}', '{HEX}', '{HEX}', NULL, 0, now(), now()),"
            f" ('{lost}', '{SETTLED}', '{BIDDER}', 100, 10, 'active', '{shared}', '{HEX}',"
            f" '{HEX}', NULL, 0, now(), now())",
            "INSERT INTO auction_allocations (id, auction_id, bid_id, bidder_organization_id,"
            " quantity, price, amount, tie_selected) VALUES"
            f" ('00000000-0000-7000-8000-00000000d0a1', '{SETTLED}', '{won}', '{BIDDER}', 10,"
            " 100, 1000, false)",
        )
        with pytest.raises(Exception, match="bids share a cash hold"):
            downgrade(url, "0013")
        assert version(url) == "0014"
        assert bid_statuses(url) == {won: "active", lost: "active"}

    def test_downgrade_refuses_while_active_bids_share_an_active_hold(
        self, fresh_database_url: str
    ) -> None:
        """0013's code releases a bid's whole hold on withdrawal: it must not run on an open
        auction whose bidder's two bids share one hold, so the downgrade refuses, whole."""
        url = fresh_database_url
        upgrade(url, "0014")
        shared = "00000000-0000-7000-8000-00000000c0bb"
        first, second = (
            "00000000-0000-7000-8000-00000000b0b1",
            "00000000-0000-7000-8000-00000000b0b2",
        )
        run_sql(
            url,
            "INSERT INTO organizations (id, name, kind, status, created_at, updated_at) VALUES"
            f" ('{SELLER}', 'Seller', 'government', 'active', now(), now()),"
            f" ('{BIDDER}', 'Bidder', 'company', 'active', now(), now())",
            _auction_sql(OPEN, "open"),
            "INSERT INTO ledger_holds (id, organization_id, asset, amount, remaining, status,"
            f" reference, created_at, updated_at) VALUES ('{shared}', '{BIDDER}', 'JPY', 2000,"
            f" 2000, 'active', 'auction:{OPEN}:bidder:{BIDDER}', now(), now())",
            "INSERT INTO auction_bids (id, auction_id, bidder_organization_id, price, quantity,"
            ' status, cash_hold_id, commitment, nonce, "group", amendments, created_at,'
            f" updated_at) VALUES ('{first}', '{OPEN}', '{BIDDER}', 100, 10, 'active',"
            f" '{shared}', '{HEX}', '{HEX}', NULL, 0, now(), now()),"
            f" ('{second}', '{OPEN}', '{BIDDER}', 100, 10, 'active', '{shared}', '{HEX}',"
            f" '{HEX}', NULL, 0, now(), now())",
        )
        with pytest.raises(Exception, match="bids share a cash hold"):
            downgrade(url, "0013")
        assert version(url) == "0014"
        assert bid_statuses(url) == {first: "active", second: "active"}


class TestFeeAccountsPerProduct:
    """0031 lets a ``fees`` account have a scope (a product's id), one per scope, and only a
    ``fees`` account; its downgrade refuses while a scoped account exists."""

    PRODUCT = "00000000-0000-7000-8000-00000000e0a1"

    def _fees(self, url: str, account_id: str, scope: str | None, kind: str = "fees") -> None:
        run_sql(
            url,
            "INSERT INTO ledger_assets (code, kind, name, created_at) VALUES"
            " ('JPY', 'cash', 'Yen', now()) ON CONFLICT DO NOTHING",
            "INSERT INTO ledger_accounts (id, organization_id, asset, kind, scope_id,"
            f" is_non_negative, created_at) VALUES ('{account_id}', NULL, 'JPY', '{kind}',"
            f" {'NULL' if scope is None else repr(scope)}, true, now())",
        )

    def test_one_fee_account_per_scope_and_only_fees_scoped(self, fresh_database_url: str) -> None:
        url = fresh_database_url
        upgrade(url, "0031")
        self._fees(url, "00000000-0000-7000-8000-00000000f0a1", None)
        self._fees(url, "00000000-0000-7000-8000-00000000f0a2", self.PRODUCT)
        with pytest.raises(asyncpg.UniqueViolationError):
            self._fees(url, "00000000-0000-7000-8000-00000000f0a3", self.PRODUCT)
        with pytest.raises(asyncpg.UniqueViolationError):
            self._fees(url, "00000000-0000-7000-8000-00000000f0a4", None)
        with pytest.raises(asyncpg.CheckViolationError):
            self._fees(url, "00000000-0000-7000-8000-00000000f0a5", self.PRODUCT, "retired")

    def test_downgrade_refuses_while_a_product_has_a_fee_account(
        self, fresh_database_url: str
    ) -> None:
        url = fresh_database_url
        upgrade(url, "0031")
        self._fees(url, "00000000-0000-7000-8000-00000000f0b1", self.PRODUCT)
        with pytest.raises(Exception, match="products have fee accounts of their own"):
            downgrade(url, "0030")
        assert version(url) == "0031"
        run_sql(url, "DELETE FROM ledger_accounts")
        downgrade(url, "0030")
        assert version(url) == "0030"
