"""A function call written out as SQL text, for a statement sent together with its COMMIT.

asyncpg sends a statement with arguments as a prepared statement, and waits for its answer
before it can send anything else: a statement and the COMMIT after it cost two round trips.
A group of orders holds its product's lock across both (``app.market.group``): in the
server's log, 1.37 ms passed on average between its write call's end and its COMMIT's start,
of a hold of about 17 ms. Sent as one simple-query message (``SELECT f(…); COMMIT``), the call and the
commit take one round trip, but the arguments must then be written into the text.

``call_sql(function, types, arguments)`` writes each argument as a literal cast to its
parameter's type. It writes only what it can write exactly, and raises ``Unwritable``
otherwise (the caller then sends the call the usual way):

- strings as standard SQL string literals (a quote doubled; backslashes are plain characters
  when ``standard_conforming_strings`` is on, which the caller checks on the connection);
  a string holding a NUL character (which no PostgreSQL text can hold) is unwritable;
- arrays as one array literal (``'{…}'::uuid[]``), each text element double-quoted with
  its quotes and backslashes escaped, ``NULL`` unquoted;
- integers (quoted), booleans, UUIDs and timezone-aware datetimes in their canonical text
  forms, except UUIDs in arrays: 32 hex digits, which PostgreSQL reads too and Python writes
  three times faster.

There is no other escaping to get wrong: every value ends up inside one quoted literal whose
only special character is the quote, and the function and types are the caller's constants.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any


class Unwritable(ValueError):
    """A value this module does not write as a literal."""


def call_sql(function: str, types: Sequence[str], arguments: Sequence[Any]) -> str:
    """``SELECT count(*) FROM function(<arguments as literals>)``: the call, its rows
    counted (a simple query's rows are not returned to asyncpg; the call is made for its
    effects)."""
    if len(types) != len(arguments):
        raise ValueError(f"{function} takes {len(types)} arguments, not {len(arguments)}")
    written = ", ".join(literal(value, t) for value, t in zip(arguments, types, strict=True))
    return f"SELECT count(*) FROM {function}({written})"


def literal(value: Any, sql_type: str) -> str:
    """``value`` as a SQL literal of type ``sql_type`` (``uuid``, ``bigint[]``…)."""
    if value is None:
        return f"NULL::{sql_type}"
    if sql_type.endswith("[]"):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise Unwritable(f"not an array: {type(value).__name__}")
        element = _ELEMENTS.get(sql_type[:-2], _element)
        return _quoted("{" + ",".join(map(element, value)) + "}") + "::" + sql_type
    return _scalar(value) + "::" + sql_type


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # quoted: ``-9223372036854775808::bigint`` would be read as
        return _quoted(str(value))  # ``-(9223372036854775808::bigint)``, out of range
    if isinstance(value, uuid.UUID):
        return _quoted(str(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise Unwritable("a datetime without a timezone")
        return _quoted(value.isoformat())
    if isinstance(value, str):
        return _quoted(value)
    raise Unwritable(f"no literal for {type(value).__name__}")


def _element(value: Any) -> str:
    """One element of an array literal (inside the quoted ``{…}``)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return _uuid_element(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise Unwritable(f"no array element for {type(value).__name__}")


def _uuid_element(value: Any) -> str:
    """A UUID as its 32 hex digits (PostgreSQL reads them without the hyphens too): several
    times faster than ``str``, and a group writes hundreds."""
    if isinstance(value, uuid.UUID):
        return f"{value.int:032x}"
    if value is None:
        return "NULL"
    raise Unwritable(f"not a UUID: {type(value).__name__}")


# The element writer for an array of each type the group's calls pass (others: ``_element``).
_ELEMENTS = {"uuid": _uuid_element}


def _quoted(text: str) -> str:
    if "\x00" in text:
        raise Unwritable("a NUL character")
    return "'" + text.replace("'", "''") + "'"
