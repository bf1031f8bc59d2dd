from __future__ import annotations

from app.core.errors import Conflict, Forbidden, InvalidInput, NotFound


class ProjectNotFound(NotFound):
    code = "project_not_found"


class BatchNotFound(NotFound):
    code = "batch_not_found"


class RetirementNotFound(NotFound):
    code = "retirement_not_found"


class ClaimNotFound(NotFound):
    code = "claim_not_found"


class PoolNotFound(NotFound):
    code = "pool_not_found"


class GoalNotFound(NotFound):
    code = "goal_not_found"


class InsufficientCredits(Conflict):
    code = "insufficient_credits"


class InsufficientCoverage(Conflict):
    code = "insufficient_coverage"


class PoolExhausted(Conflict):
    code = "pool_exhausted"


class DuplicateReference(Conflict):
    code = "duplicate_reference"


class ClaimAlreadyRevoked(Conflict):
    code = "claim_already_revoked"


class GoalExists(Conflict):
    code = "goal_exists"


class PurposeNotAllowed(InvalidInput):
    code = "purpose_not_allowed"


class InvalidTransfer(InvalidInput):
    code = "invalid_transfer"


class NotAMunicipality(Forbidden):
    code = "not_a_municipality"


class SerialRangeExhausted(Conflict):
    code = "serial_range_exhausted"
