from __future__ import annotations

from app.core.errors import Conflict, DomainError, InvalidInput, NotFound


class InsufficientBalance(Conflict):
    code = "insufficient_balance"


class AccountNotFound(NotFound):
    code = "account_not_found"


class HoldNotFound(NotFound):
    code = "hold_not_found"


class HoldNotActive(Conflict):
    code = "hold_not_active"


class DuplicateDeposit(Conflict):
    code = "duplicate_deposit"


class InvalidEntry(InvalidInput):
    code = "invalid_entry"


class LedgerInvariantViolated(DomainError):
    """The database refused a write that would break a ledger invariant: always a bug."""

    status_code = 500
    code = "ledger_invariant_violated"
