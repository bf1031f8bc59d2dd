"""procrastinate's tables are created by migration 0002 from procrastinate's own SQL, not from
our models: Alembic's autogenerate (``alembic check``, ``revision --autogenerate``) must not
compare them with ``Base.metadata``, or it would propose dropping them.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "procrastinate_"


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic ``include_name`` hook: leave out procrastinate's tables (and so their indexes)."""
    return not (type_ == "table" and name is not None and name.startswith(PREFIX))
