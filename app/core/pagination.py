"""Cursor pagination: ``?limit=`` (1–500, default 50) and an opaque ``?cursor=``.

A cursor encodes the sort key of the last row returned; rows are read with a keyset
condition (``WHERE key < :cursor``), so a page costs the same however deep it is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from app.core.errors import InvalidInput

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int
    after: str | None  # the decoded cursor: the sort key of the last row seen


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("cursor is not valid", field="cursor", location="query") from exc


async def page_params(  # async: a plain def dependency would run in the thread pool
    limit: Annotated[int, Query(ge=1, le=500, description="Page size, 1–500.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` from the previous page.")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after=decode_cursor(cursor) if cursor else None)


PageDep = Annotated[PageParams, Depends(page_params)]


def make_page(rows: list[T], params: PageParams, key: str | None) -> Page[T]:
    """``rows`` were fetched with ``limit + 1``; ``key`` is the sort key of row ``limit - 1``."""
    has_more = len(rows) > params.limit
    return Page(
        data=rows[: params.limit], next_cursor=encode_cursor(key) if has_more and key else None
    )
