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
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import InvalidInput
from app.core.ids import new_id
from app.core.pagination import Page, PageParams, make_page
from app.core.repository import parse_uuid_cursor
from app.core.time import utc_now
from app.db.deferred import LedgerOp, deferred
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
    HoldStatus,
    Posting,
)
from app.ledger.posting import MAX_AMOUNT, EntryError, Leg, transfer, validate_legs

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
    session: AsyncSession,
    organization_id: uuid.UUID | None,
    asset: str,
    kind: AccountKind,
    scope_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """The id of an account, created on first use. Participant accounts are non-negative.
    ``scope_id``: a scoped ``fees`` account's scope (a market product's id)."""
    where = (
        Account.organization_id.is_(None)
        if organization_id is None
        else Account.organization_id == organization_id,
        Account.asset == asset,
        Account.kind == kind,
        Account.scope_id.is_(None) if scope_id is None else Account.scope_id == scope_id,
    )
    found = await session.scalar(select(Account.id).where(*where))
    if found is not None:
        return found
    created = await session.scalar(
        text(
            "INSERT INTO ledger_accounts"
            " (id, organization_id, asset, kind, scope_id, is_non_negative, created_at)"
            " VALUES (:id, :org, :asset, :kind, :scope, :nn, now())"
            " ON CONFLICT (organization_id, asset, kind, scope_id) DO NOTHING RETURNING id"
        ),
        {
            "id": new_id(),
            "org": organization_id,
            "asset": asset,
            "kind": kind.value,
            "scope": scope_id,
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
    if (writes := deferred(session)) is not None:
        writes.ledger += [_deferred_transfer(entry) for entry in entries]
        return [entry.id for entry in entries]
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


def _deferred_transfer(entry: EntrySpec) -> LedgerOp:
    """A deferred entry (``app.db.deferred``): only a plain two-leg transfer is deferrable."""
    try:
        validate_legs(entry.legs)
    except EntryError as exc:
        raise InvalidEntry(str(exc)) from exc
    if len(entry.legs) != 2 or entry.idempotency_key is not None or entry.metadata is not None:
        raise RuntimeError("only a plain two-leg transfer can be deferred")
    source, destination = sorted(entry.legs, key=lambda leg: leg.amount)
    return LedgerOp(
        "transfer",
        entry.id,
        asset=destination.asset,
        amount=destination.amount,
        source=source.account_id,
        destination=destination.account_id,
        entry_kind=entry.kind,
        reference=entry.reference,
    )


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


# Each hold operation is one call of a SQL function (migration 0013: ``ledger_hold_reserve``,
# ``ledger_hold_take``) straight through the driver, not three to five statements: the order
# path runs them under its product lock, so every round trip saved there is throughput.
# ``ledger_post_entries`` still writes every posting (same entries, kinds, references and
# ``hold_id`` metadata as ever). While the session defers its writes (``app.db.deferred``: a
# group of orders), ``reserve``, ``settle_hold``, ``release`` (of a known amount),
# ``release_rest`` and plain two-leg ``post_entries`` are recorded instead, and sent with the
# group's other writes in one call (``tanso_apply_deferred``, migration 0015).

_RESERVE_FAST_SQL = "SELECT ledger_hold_reserve($1, $2, $3, $4, $5, $6)"
_TAKE_FAST_SQL = "SELECT ledger_hold_take($1, $2, $3, $4, $5, $6, $7)"
_ADD_FAST_SQL = "SELECT ledger_hold_add($1, $2, $3, $4)"  # migration 0014
HOLD_NOT_FOUND_SQLSTATE = "TN011"
HOLD_NOT_ACTIVE_SQLSTATE = "TN012"
HOLD_AMOUNT_SQLSTATE = "TN013"
HOLD_INTO_ITSELF_SQLSTATE = "TN015"


def _check_amount(amount: int) -> None:
    """What ``transfer`` and ``validate_legs`` refuse in the Python path, with its messages."""
    if type(amount) is not int:
        raise InvalidEntry("amounts are integers")
    if amount <= 0:
        raise InvalidEntry("a transfer moves a positive amount")
    if amount > MAX_AMOUNT:
        raise InvalidEntry(f"a posting is at most {MAX_AMOUNT} in absolute value")


async def _hold_call(
    session: AsyncSession, sql: str, args: Sequence[Any], hold_id: uuid.UUID
) -> Any:
    try:
        return await scalar_call(session, sql, args)
    except DatabaseRefusal as refusal:
        if refusal.sqlstate == HOLD_NOT_FOUND_SQLSTATE:
            raise HoldNotFound("No such hold.", hold_id=str(hold_id)) from refusal
        if refusal.sqlstate == HOLD_NOT_ACTIVE_SQLSTATE:
            raise HoldNotActive(
                "The hold is already fully used or released.", hold_id=str(hold_id)
            ) from refusal
        if refusal.sqlstate == HOLD_AMOUNT_SQLSTATE:
            remaining = refusal.message.rsplit(" ", 1)[-1].strip()
            raise InvalidEntry(
                f"Amount must be between 1 and the hold's remaining {remaining}.",
                hold_id=str(hold_id),
            ) from refusal
        if refusal.sqlstate == HOLD_INTO_ITSELF_SQLSTATE:
            raise InvalidEntry(
                "A hold cannot pay into its own held account.", hold_id=str(hold_id)
            ) from refusal
        translated = _translate_sqlstate(refusal.sqlstate, refusal.message)
        if translated is None:
            raise refusal.__cause__ or refusal from None
        raise translated from refusal


async def reserve(
    session: AsyncSession,
    organization_id: uuid.UUID,
    asset: str,
    amount: int,
    *,
    reference: str | None = None,
) -> uuid.UUID:
    """Hold ``amount``: move it from the owner's available to its held account, in one round
    trip (``ledger_hold_reserve``). Returns the hold id."""
    _check_amount(amount)
    hold_id = new_id()
    if (writes := deferred(session)) is not None:
        writes.ledger.append(
            LedgerOp(
                "reserve", new_id(), hold_id, organization_id, asset, amount, reference=reference
            )
        )
        return hold_id
    await _hold_call(
        session,
        _RESERVE_FAST_SQL,
        [hold_id, new_id(), organization_id, asset, amount, reference],
        hold_id,
    )
    return hold_id


async def add_to_hold(
    session: AsyncSession, hold_id: uuid.UUID, amount: int, *, reference: str | None = None
) -> None:
    """Grow an active hold by ``amount``: move it from the owner's available to its held
    account and add it to the hold's amount and remaining, in one round trip
    (``ledger_hold_add``). A shortfall is ``InsufficientBalance`` and changes nothing; shrink
    a hold with ``release(hold_id, amount)``."""
    _check_amount(amount)
    await _hold_call(session, _ADD_FAST_SQL, [hold_id, new_id(), amount, reference], hold_id)


async def settle_hold(
    session: AsyncSession,
    hold_id: uuid.UUID,
    destination: uuid.UUID,
    amount: int,
    *,
    kind: str = "settle",
    reference: str | None = None,
) -> None:
    """Pay ``amount`` out of a hold to ``destination`` (an account of the same asset), in one
    round trip (``ledger_hold_take``)."""
    _check_amount(amount)
    args = [hold_id, amount, destination, new_id(), kind, reference, False]
    if _defer_take(session, args):
        return
    await _hold_call(session, _TAKE_FAST_SQL, args, hold_id)


async def release(
    session: AsyncSession,
    hold_id: uuid.UUID,
    amount: int | None = None,
    *,
    reference: str | None = None,
) -> int:
    """Give back (part of; all when ``amount`` is None) a hold to the owner's available
    balance, in one round trip (``ledger_hold_take``). Returns the amount released."""
    if amount is not None:
        _check_amount(amount)
    args = [hold_id, amount, None, new_id(), "release", reference, False]
    if amount is None and deferred(session) is not None:
        raise RuntimeError("releasing a whole hold cannot be deferred: use release_rest")
    if amount is not None and _defer_take(session, args):
        return amount
    taken = await _hold_call(session, _TAKE_FAST_SQL, args, hold_id)
    return int(taken)


async def release_rest(session: AsyncSession, hold_id: uuid.UUID) -> int | None:
    """Give back whatever a hold has left, in one round trip; a used-up (closed) hold is no
    error and nothing is written (a closed order's hold, usually spent by its fills). Returns
    the amount released (None when deferred: it is known only once sent)."""
    args = [hold_id, None, None, new_id(), "release", None, True]
    if _defer_take(session, args):
        return None
    taken = await _hold_call(session, _TAKE_FAST_SQL, args, hold_id)
    return int(taken)


def _defer_take(session: AsyncSession, args: list[Any]) -> bool:
    """Record a ``ledger_hold_take`` call (its ``args``) if the session defers its writes."""
    writes = deferred(session)
    if writes is None:
        return False
    hold_id, amount, destination, entry_id, kind, reference, rest_only = args
    writes.ledger.append(
        LedgerOp(
            "take",
            entry_id,
            hold_id,
            amount=amount,
            destination=destination,
            entry_kind=kind,
            reference=reference,
            rest_only=rest_only,
        )
    )
    return True


# --- batched holds (settling many at once: an auction close) ---------------------------


async def ensure_accounts(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str, AccountKind]]
) -> dict[tuple[uuid.UUID, str, AccountKind], uuid.UUID]:
    """The ids of many participant accounts ``(organization, asset, kind)``, created on first
    use: one INSERT of the missing ones and one SELECT, whatever the count (``account_id`` for
    one account)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    params = {
        "ids": [new_id() for _ in wanted],
        "orgs": [org for org, _, _ in wanted],
        "assets": [asset for _, asset, _ in wanted],
        "kinds": [kind.value for _, _, kind in wanted],
    }
    await session.execute(
        text(
            "INSERT INTO ledger_accounts (id, organization_id, asset, kind, is_non_negative,"
            " created_at)"
            " SELECT id, org, asset, kind, true, now()"
            " FROM unnest(CAST(:ids AS uuid[]), CAST(:orgs AS uuid[]), CAST(:assets AS text[]),"
            " CAST(:kinds AS text[])) AS k(id, org, asset, kind)"
            " ORDER BY org, asset, kind"
            " ON CONFLICT (organization_id, asset, kind, scope_id) DO NOTHING"
        ),
        params,
    )
    rows = (
        await session.execute(
            text(
                "SELECT a.organization_id, a.asset, a.kind, a.id FROM ledger_accounts a"
                " JOIN unnest(CAST(:orgs AS uuid[]), CAST(:assets AS text[]),"
                " CAST(:kinds AS text[])) AS k(org, asset, kind)"
                " ON a.organization_id = k.org AND a.asset = k.asset AND a.kind = k.kind"
            ),
            {key: params[key] for key in ("orgs", "assets", "kinds")},
        )
    ).all()
    found = {(org, str(asset), AccountKind(kind)): acct for org, asset, kind, acct in rows}
    if len(found) != len(wanted):  # pragma: no cover - the INSERT made every missing row
        raise LedgerInvariantViolated("accounts could not be created")
    return found


@dataclass(slots=True)
class HoldSettlement:
    """What to do with one hold in :func:`settle_holds`: pay ``payouts`` (destination account,
    amount > 0; accounts of the hold's asset) out of it, then give back whatever is left to
    the owner's available balance if ``release_rest`` (else the rest stays held)."""

    hold_id: uuid.UUID
    payouts: Sequence[tuple[uuid.UUID, int]] = ()
    release_rest: bool = False

    @property
    def paid(self) -> int:
        return sum(amount for _, amount in self.payouts)


# A join with the id array rather than ``id = ANY(…)``: with 100,000 holds the planner hashes
# it instead of descending the index once per id.
_LOCK_HOLDS_SQL = text(
    "SELECT h.id, h.organization_id, h.asset, h.remaining, h.status, h.reference"
    " FROM ledger_holds h JOIN unnest(CAST(:ids AS uuid[])) AS u(id) ON h.id = u.id"
    " ORDER BY h.id FOR UPDATE OF h"
)
_UPDATE_HOLDS_SQL = text(
    "UPDATE ledger_holds h SET remaining = u.remaining,"
    " status = CASE WHEN u.remaining = 0 THEN 'closed' ELSE 'active' END, updated_at = :now"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:remaining AS bigint[])) AS u(id, remaining)"
    " WHERE h.id = u.id AND h.status = 'active'"
)


async def settle_holds(
    session: AsyncSession,
    items: Sequence[HoldSettlement],
    *,
    kind: str = "settle",
    reference: str | None = None,
) -> None:
    """Settle and release many holds at once: the same balances as ``settle_hold`` for each
    payout followed by ``release`` of the rest, in three statements whatever the count.

    The holds are locked in id order (``SELECT … FOR UPDATE``), checked (each exists, is
    active, and what it pays fits in what remains: ``HoldNotFound``, ``HoldNotActive``,
    ``InvalidEntry`` otherwise, before anything is written), updated by one ``UPDATE … FROM
    unnest``, and the money moves in one ``post_entries`` call with one entry per owner and
    asset whose legs are summed per account (held → each destination, held → available). The
    ledger check ``holds_match_held`` compares held balances with open holds, so the
    aggregated entries keep the books exact. ``reference`` defaults to each owner's first
    hold's reference.
    """
    if not items:
        return
    ids = [item.hold_id for item in items]
    if len(set(ids)) != len(ids):
        raise InvalidEntry("A hold appears twice in one batch.")
    for item in items:
        for _, amount in item.payouts:
            if type(amount) is not int or amount <= 0:
                raise InvalidEntry("Payouts are positive integers.", hold_id=str(item.hold_id))
        if not item.payouts and not item.release_rest:
            raise InvalidEntry("Nothing to do with the hold.", hold_id=str(item.hold_id))
    rows = {row[0]: row for row in await session.execute(_LOCK_HOLDS_SQL, {"ids": ids})}
    # Per (owner, asset): the signed amount of each account of the aggregated entry.
    legs: dict[tuple[uuid.UUID, str], dict[uuid.UUID | str, int]] = {}
    references: dict[tuple[uuid.UUID, str], str | None] = {}
    remaining: list[int] = []
    active = HoldStatus.active.value
    for item in items:
        found = rows.get(item.hold_id)
        if found is None:
            raise HoldNotFound("No such hold.", hold_id=str(item.hold_id))
        _, organization_id, asset, left, status, hold_reference = found
        if status != active:
            raise HoldNotActive(
                "The hold is already fully used or released.", hold_id=str(item.hold_id)
            )
        paid = 0
        for _, amount in item.payouts:
            paid += amount
        if paid > left:
            raise InvalidEntry(
                f"Amount must be between 1 and the hold's remaining {left}.",
                hold_id=str(item.hold_id),
            )
        released = left - paid if item.release_rest else 0
        remaining.append(left - paid - released)
        owner = (organization_id, asset)
        sums = legs.get(owner)
        if sums is None:
            # "held" and "available" stand for the owner's accounts until their ids are known.
            sums = legs[owner] = {"held": 0, "available": 0}
            references[owner] = hold_reference
        sums["held"] -= paid + released
        sums["available"] += released
        for destination, amount in item.payouts:
            sums[destination] = sums.get(destination, 0) + amount
    await session.execute(_UPDATE_HOLDS_SQL, {"ids": ids, "remaining": remaining, "now": utc_now()})
    accounts = await ensure_accounts(
        session,
        [
            (org, asset, account_kind)
            for org, asset in legs
            for account_kind in (AccountKind.held, AccountKind.available)
        ],
    )
    entries = []
    for (org, asset), sums in legs.items():
        by_account: dict[uuid.UUID, int] = {}
        for key, amount in sums.items():
            acct = accounts[(org, asset, AccountKind(key))] if isinstance(key, str) else key
            by_account[acct] = by_account.get(acct, 0) + amount
        entry_legs = [Leg(acct, asset, amount) for acct, amount in by_account.items() if amount]
        if entry_legs:
            entries.append(
                EntrySpec(
                    kind=kind, legs=entry_legs, reference=reference or references[(org, asset)]
                )
            )
    await post_entries(session, entries)


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
