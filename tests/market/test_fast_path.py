"""The order path's shortcuts keep their answers exact (``app.market.service``).

``lock_settlement`` trusts a process-wide hint of which accounts exist to find and lock them
in one statement by key; a stale hint (an account that is gone, as after the suite's
TRUNCATE, or was created by a transaction that rolled back) must fall back to the long way
and still return every account's real id. (A group's write call that locks the accounts by
the ids seen: ``test_deferred_group``.)
"""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger import service as ledger_service
from app.ledger.models import Account, AccountKind
from app.market import service as market_service
from tests.factories import create_org, deposit

CASH = ledger_service.CASH


async def _ids(session: AsyncSession, org: uuid.UUID) -> dict[AccountKind, uuid.UUID]:
    rows = await session.execute(
        select(Account.kind, Account.id).where(
            Account.organization_id == org, Account.asset == CASH
        )
    )
    return {AccountKind(kind): account for kind, account in rows}


async def test_a_stale_hint_falls_back_and_creates_the_account(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    org = uuid.UUID((await create_org(client)).id)
    held = (org, CASH, AccountKind.held)
    market_service._SEEN_ACCOUNTS[held] = uuid.uuid4()  # no such account yet: the hint is wrong
    locked = await market_service.lock_settlement(session, [], {held})
    await session.commit()
    assert locked == {held: (await _ids(session, org))[AccountKind.held]}
    assert held not in market_service._SEEN_ACCOUNTS  # dropped, not trusted again


async def test_the_hint_path_returns_the_same_ids_as_the_long_way(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    payer = await create_org(client)
    await deposit(client, payer, 1_000)
    org = uuid.UUID(payer.id)
    keys = {(org, CASH, AccountKind.available), (org, CASH, AccountKind.held)}
    product = uuid.uuid4()  # a product's fee account is scoped by its id (migration 0031)
    market_service._SEEN_ACCOUNTS.clear()
    # The long way: the held account is created here (so not remembered: not yet committed).
    first = await market_service.lock_settlement(session, [], keys, fee_scope=product)
    await session.commit()
    # The long way again, which now finds every account and remembers them.
    again = await market_service.lock_settlement(session, [], keys, fee_scope=product)
    await session.commit()
    assert keys | {market_service.fee_key(product)} <= market_service._SEEN_ACCOUNTS.keys()
    second = await market_service.lock_settlement(session, [], keys, fee_scope=product)
    await session.commit()
    assert keys <= market_service._SEEN_ACCOUNTS.keys()  # the one-statement path served it
    ids = await _ids(session, org)
    assert first == again == second
    assert {k: v for k, v in second.items() if k[0] == org} == {
        (org, CASH, kind): ids[kind] for kind in (AccountKind.available, AccountKind.held)
    }
    fees = await ledger_service.account_id(session, None, CASH, AccountKind.fees, product)
    assert second[market_service.fee_key(product)] == fees
    assert fees != await ledger_service.account_id(session, None, CASH, AccountKind.fees)
