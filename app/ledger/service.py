"""The ledger: the only way any balance changes.

Every write goes through ``post_entries`` (one SQL function call per batch of entries, see the
migration that creates ``ledger_post_entries``): it locks the touched accounts in id order,
refuses to take a non-negative account below zero, appends the postings with their running
balances and updates the cached balances, all in one round trip.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidInput
from app.core.ids import new_id
from app.core.pagination import Page, PageParams, make_page
from app.core.repository import parse_uuid_cursor
from app.core.time import utc_now
from app.db.driver import DatabaseRefusal, scalar_call
from app.ledger.errors import (
    AccountNotFound,
    DuplicateDeposit,
    HoldNotActive,
    HoldNotFound,
    InsufficientBalance,
    InvalidEntry,
    LedgerInvariantViolated,
)
from app.ledger.models import (
    Account,
    AccountKind,
    Asset,
    AssetKind,
    Deposit,
    Entry,
    Hold,
    HoldStatus,
    Posting,
)
from app.ledger.posting import EntryError, Leg, transfer, validate_legs

log = structlog.get_logger()

CASH = "JPY"
CREDIT_PREFIX = "CREDIT:"
INSUFFICIENT_BALANCE_SQLSTATE = "TN001"
# TN002 unbalanced entry, TN003 posting added outside the entry's transaction or after the
# checks ran, TN004 update or delete of the append-only tables.
INVARIANT_SQLSTATES = frozenset({"TN002", "TN003", "TN004"})


def credit_asset(batch_id: uuid.UUID) -> str:
    """The ledger asset that counts the credits of one issuance batch."""
    return f"{CREDIT_PREFIX}{batch_id}"


@dataclass(slots=True)
class EntrySpec:
    kind: str
    legs: Sequence[Leg]
    reference: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    id: uuid.UUID = field(default_factory=new_id)


# --- assets and accounts ---------------------------------------------------------------


async def ensure_asset(session: AsyncSession, code: str, kind: AssetKind, name: str) -> None:
    await session.execute(
        text(
            "INSERT INTO ledger_assets (code, kind, name, created_at) VALUES (:c, :k, :n, now())"
            " ON CONFLICT (code) DO NOTHING"
        ),
        {"c": code, "k": kind.value, "n": name},
    )


async def account_id(
    session: AsyncSession, organization_id: uuid.UUID | None, asset: str, kind: AccountKind
) -> uuid.UUID:
    """The id of an account, created on first use. Participant accounts are non-negative."""
    where = (
        Account.organization_id.is_(None)
        if organization_id is None
        else Account.organization_id == organization_id,
        Account.asset == asset,
        Account.kind == kind,
    )
    found = await session.scalar(select(Account.id).where(*where))
    if found is not None:
        return found
    created = await session.scalar(
        text(
            "INSERT INTO ledger_accounts (id, organization_id, asset, kind, is_non_negative, created_at)"
            " VALUES (:id, :org, :asset, :kind, :nn, now())"
            " ON CONFLICT (organization_id, asset, kind) DO NOTHING RETURNING id"
        ),
        {
            "id": new_id(),
            "org": organization_id,
            "asset": asset,
            "kind": kind.value,
            "nn": kind != AccountKind.external,
        },
    )
    if created is not None:
        return uuid.UUID(str(created))
    # Another transaction created it between our two statements: read it (a new snapshot).
    found = await session.scalar(select(Account.id).where(*where))
    if found is None:  # pragma: no cover - only if the row vanished, which cannot happen
        raise LedgerInvariantViolated("account could not be created")
    return found


# --- posting ---------------------------------------------------------------------------

_POST_SQL = "SELECT ledger_post_entries($1, $2, $3, $4, $5, $6, $7, $8, $9)"


async def post_entries(session: AsyncSession, entries: Sequence[EntrySpec]) -> list[uuid.UUID]:
    """Write entries atomically, in one round trip. Returns the ids written; an entry whose
    ``idempotency_key`` was already used is skipped (it was written before)."""
    if not entries:
        return []
    leg_entries: list[uuid.UUID] = []
    leg_accounts: list[uuid.UUID] = []
    leg_assets: list[str] = []
    leg_amounts: list[int] = []
    for entry in entries:
        try:
            validate_legs(entry.legs)
        except EntryError as exc:
            raise InvalidEntry(str(exc)) from exc
        for leg in entry.legs:
            leg_entries.append(entry.id)
            leg_accounts.append(leg.account_id)
            leg_assets.append(leg.asset)
            leg_amounts.append(leg.amount)
    params = {
        "entry_ids": [e.id for e in entries],
        "kinds": [e.kind for e in entries],
        "references": [e.reference for e in entries],
        "keys": [e.idempotency_key for e in entries],
        # A raw text() parameter gets no JSON type processing: asyncpg takes jsonb as text.
        "metadata": [None if e.metadata is None else json.dumps(e.metadata) for e in entries],
        "leg_entries": leg_entries,
        "leg_accounts": leg_accounts,
        "leg_assets": leg_assets,
        "leg_amounts": leg_amounts,
    }
    try:
        written = await scalar_call(session, _POST_SQL, list(params.values()))
    except DatabaseRefusal as refusal:
        translated = _translate_sqlstate(refusal.sqlstate, refusal.message)
        if translated is None:
            raise refusal.__cause__ or refusal from None
        raise translated from refusal
    return list(written or [])


async def post_entry(session: AsyncSession, entry: EntrySpec) -> uuid.UUID | None:
    """Write one entry. Returns its id, or None if its idempotency key was already used."""
    written = await post_entries(session, [entry])
    return written[0] if written else None


def _transfer(source: uuid.UUID, destination: uuid.UUID, asset: str, amount: int) -> list[Leg]:
    try:
        return transfer(source, destination, asset, amount)
    except EntryError as exc:
        raise InvalidEntry(str(exc)) from exc


def _translate_sqlstate(sqlstate: str | None, message: str) -> Exception | None:
    """The domain error for a refusal of the posting function, or None for anything else."""
    if sqlstate == INSUFFICIENT_BALANCE_SQLSTATE:
        account = message.rsplit(" ", 1)[-1] if "account" in message else None
        return InsufficientBalance(
            "The balance is not enough for this operation.", account_id=account
        )
    if sqlstate in INVARIANT_SQLSTATES:
        # The database refused to break a ledger invariant: a bug in the caller, never input.
        return LedgerInvariantViolated(message, sqlstate=sqlstate)
    if sqlstate == "23503":
        return InvalidEntry(
            "A posting names an account that does not exist or holds another asset."
        )
    return None


# --- holds -----------------------------------------------------------------------------


async def reserve(
    session: AsyncSession,
    organization_id: uuid.UUID,
    asset: str,
    amount: int,
    *,
    reference: str | None = None,
) -> uuid.UUID:
    """Hold ``amount``: move it from the owner's available to its held account."""
    available = await account_id(session, organization_id, asset, AccountKind.available)
    held = await account_id(session, organization_id, asset, AccountKind.held)
    hold_id = new_id()
    legs = _transfer(available, held, asset, amount)
    await post_entry(
        session,
        EntrySpec(kind="hold", legs=legs, reference=reference, metadata={"hold_id": str(hold_id)}),
    )
    now = utc_now()
    await session.execute(
        insert(Hold).values(
            id=hold_id,
            organization_id=organization_id,
            asset=asset,
            amount=amount,
            remaining=amount,
            status=HoldStatus.active,
            reference=reference,
            created_at=now,
            updated_at=now,
        )
    )
    return hold_id


async def _take_from_hold(
    session: AsyncSession, hold_id: uuid.UUID, amount: int | None
) -> tuple[Hold, int]:
    # populate_existing: a copy of the hold already in this session (loaded before the lock, or
    # in an earlier transaction) is stale; the locked row is the truth.
    hold = (
        await session.execute(
            select(Hold)
            .where(Hold.id == hold_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if hold is None:
        raise HoldNotFound("No such hold.", hold_id=str(hold_id))
    if hold.status != HoldStatus.active:
        raise HoldNotActive("The hold is already fully used or released.", hold_id=str(hold_id))
    take = hold.remaining if amount is None else amount
    if take <= 0 or take > hold.remaining:
        raise InvalidEntry(
            f"Amount must be between 1 and the hold's remaining {hold.remaining}.",
            hold_id=str(hold_id),
        )
    remaining = hold.remaining - take
    await session.execute(
        update(Hold)
        .where(Hold.id == hold_id)
        .values(
            remaining=remaining,
            status=HoldStatus.active if remaining else HoldStatus.closed,
            updated_at=utc_now(),
        )
    )
    return hold, take


async def release(
    session: AsyncSession,
    hold_id: uuid.UUID,
    amount: int | None = None,
    *,
    reference: str | None = None,
) -> int:
    """Give back (part of) a hold to the owner's available balance. Returns the amount released."""
    hold, take = await _take_from_hold(session, hold_id, amount)
    available = await account_id(session, hold.organization_id, hold.asset, AccountKind.available)
    held = await account_id(session, hold.organization_id, hold.asset, AccountKind.held)
    await post_entry(
        session,
        EntrySpec(
            kind="release",
            legs=_transfer(held, available, hold.asset, take),
            reference=reference or hold.reference,
            metadata={"hold_id": str(hold_id)},
        ),
    )
    return take


async def settle_hold(
    session: AsyncSession,
    hold_id: uuid.UUID,
    destination: uuid.UUID,
    amount: int,
    *,
    kind: str = "settle",
    reference: str | None = None,
) -> None:
    """Pay ``amount`` out of a hold to ``destination`` (an account of the same asset)."""
    hold, take = await _take_from_hold(session, hold_id, amount)
    held = await account_id(session, hold.organization_id, hold.asset, AccountKind.held)
    await post_entry(
        session,
        EntrySpec(
            kind=kind,
            legs=_transfer(held, destination, hold.asset, take),
            reference=reference or hold.reference,
            metadata={"hold_id": str(hold_id)},
        ),
    )


# --- reads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetBalance:
    asset: str
    asset_kind: AssetKind
    available: int
    held: int


async def balances(session: AsyncSession, organization_id: uuid.UUID) -> list[AssetBalance]:
    rows = (
        await session.execute(
            select(Account.asset, Asset.kind, Account.kind, Account.balance)
            .join(Asset, Asset.code == Account.asset)
            .where(Account.organization_id == organization_id)
            .order_by(Account.asset)
        )
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for asset, asset_kind, kind, balance in rows:
        item = out.setdefault(
            asset, {"asset_kind": AssetKind(asset_kind), "available": 0, "held": 0}
        )
        item[kind] = balance
    return [
        AssetBalance(asset=a, asset_kind=v["asset_kind"], available=v["available"], held=v["held"])
        for a, v in out.items()
    ]


async def list_accounts(
    session: AsyncSession, organization_id: uuid.UUID, params: PageParams
) -> Page[Account]:
    stmt = select(Account).where(Account.organization_id == organization_id)
    if params.after is not None:
        stmt = stmt.where(Account.id > parse_uuid_cursor(params.after))
    rows = list(
        (await session.execute(stmt.order_by(Account.id).limit(params.limit + 1))).scalars()
    )
    last = rows[params.limit - 1] if len(rows) > params.limit else None
    return make_page(rows, params, str(last.id) if last else None)


@dataclass(frozen=True, slots=True)
class PostingView:
    id: int
    entry_id: uuid.UUID
    entry_kind: str
    amount: int
    balance_after: int
    reference: str | None
    created_at: Any


def _posting_cursor(after: str) -> int:
    """A posting id from a cursor: an integer within BIGINT (else the driver refuses it)."""
    try:
        value = int(after)
    except ValueError as exc:
        raise InvalidInput("cursor is not valid", field="cursor") from exc
    if not 0 < value < 2**63:
        raise InvalidInput("cursor is not valid", field="cursor")
    return value


async def list_postings(
    session: AsyncSession,
    organization_id: uuid.UUID | None,
    account: uuid.UUID,
    params: PageParams,
) -> Page[PostingView]:
    """An account's postings, newest first. ``organization_id`` None: any account (admin)."""
    owner_ok = select(Account.id).where(Account.id == account)
    if organization_id is not None:
        owner_ok = owner_ok.where(Account.organization_id == organization_id)
    if await session.scalar(owner_ok) is None:
        raise AccountNotFound("No such account.")
    stmt = (
        select(
            Posting.id,
            Posting.entry_id,
            Entry.kind,
            Posting.amount,
            Posting.balance_after,
            Entry.reference,
            Posting.created_at,
        )
        .join(Entry, Entry.id == Posting.entry_id)
        .where(Posting.account_id == account)
    )
    if params.after is not None:
        stmt = stmt.where(Posting.id < _posting_cursor(params.after))
    rows = [
        PostingView(*row)
        for row in (
            await session.execute(stmt.order_by(Posting.id.desc()).limit(params.limit + 1))
        ).all()
    ]
    last = rows[params.limit - 1] if len(rows) > params.limit else None
    return make_page(rows, params, str(last.id) if last else None)


# --- deposits --------------------------------------------------------------------------


async def record_deposit(
    session: AsyncSession, organization_id: uuid.UUID, amount: int, reference: str
) -> Deposit:
    """A bank transfer received: cash from the external account to the owner's available."""
    if await session.scalar(
        select(func.count())
        .select_from(Deposit)
        .where(Deposit.organization_id == organization_id, Deposit.reference == reference)
    ):
        raise DuplicateDeposit(
            "A deposit with this reference was already recorded for this organisation.",
            reference=reference,
        )
    external = await account_id(session, None, CASH, AccountKind.external)
    available = await account_id(session, organization_id, CASH, AccountKind.available)
    entry = EntrySpec(
        kind="deposit", legs=_transfer(external, available, CASH, amount), reference=reference
    )
    await post_entry(session, entry)
    deposit = Deposit(
        id=new_id(),
        organization_id=organization_id,
        amount=amount,
        reference=reference,
        status="completed",
        entry_id=entry.id,
        created_at=utc_now(),
    )
    session.add(deposit)
    try:
        await session.flush()
    except IntegrityError as exc:
        if "ledger_deposits_organization_id_reference_key" in str(exc.orig):
            raise DuplicateDeposit(
                "A deposit with this reference was already recorded for this organisation.",
                reference=reference,
            ) from exc
        raise
    log.info("ledger.deposit_recorded", organization_id=str(organization_id), amount=amount)
    return deposit
