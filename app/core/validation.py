"""Input checks shared by every domain's request schemas."""

from __future__ import annotations

import unicodedata

from pydantic import AfterValidator

# Cc: control characters (NUL cannot even be stored in a PostgreSQL text column);
# Cs: lone surrogates (JSON can spell them, UTF-8 cannot encode them).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


def reject_control_characters(value: str) -> str:
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in value):
        raise ValueError("must not contain control characters or lone surrogates")
    return value


# For a single-line text field: ``Annotated[str, StringConstraints(...), PlainText]``.
PlainText = AfterValidator(reject_control_characters)
