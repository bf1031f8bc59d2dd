from __future__ import annotations

from app.core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"


class MissingScope(Forbidden):
    code = "insufficient_scope"


class OrganizationNotFound(NotFound):
    code = "organization_not_found"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class ScopeNotAllowed(InvalidInput):
    code = "scope_not_allowed"


class CorporateNumberTaken(Conflict):
    code = "corporate_number_taken"
