"""Cursor pagination helpers: cursors, page parameters, pages."""

from __future__ import annotations

import uuid

import pytest

from app.core.errors import InvalidInput
from app.core.pagination import (
    Page,
    PageParams,
    decode_cursor,
    encode_cursor,
    make_page,
    page_params,
)
from app.core.repository import parse_uuid_cursor


class TestCursors:
    @pytest.mark.parametrize(
        "key", [str(uuid.UUID(int=0)), "01a22344-3f7c-7d31-bf81-46010ec96934", "日本|2025|x", "a"]
    )
    def test_round_trip(self, key: str) -> None:
        assert decode_cursor(encode_cursor(key)) == key

    def test_cursor_is_url_safe_without_padding(self) -> None:
        cursor = encode_cursor("\xff\xfe?" * 7)
        assert "=" not in cursor
        assert set(cursor) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )

    @pytest.mark.parametrize("cursor", ["a", "abcde", "_w"])  # bad length; not UTF-8
    def test_undecodable_cursor_is_invalid_query_input(self, cursor: str) -> None:
        with pytest.raises(InvalidInput) as caught:
            decode_cursor(cursor)
        assert caught.value.extra["errors"][0]["loc"] == ["query", "cursor"]

    def test_key_that_is_not_a_uuid_is_invalid_query_input(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            parse_uuid_cursor("not-a-uuid")
        assert caught.value.extra["errors"][0]["loc"] == ["query", "cursor"]


class TestPageParams:
    async def test_defaults(self) -> None:
        assert await page_params() == PageParams(limit=50, after=None)

    async def test_cursor_is_decoded(self) -> None:
        key = str(uuid.uuid4())
        found = await page_params(limit=5, cursor=encode_cursor(key))
        assert found == PageParams(limit=5, after=key)

    async def test_empty_cursor_means_the_first_page(self) -> None:
        assert (await page_params(cursor="")).after is None


class TestMakePage:
    def test_more_rows_than_the_limit_give_a_cursor_to_the_last_shown(self) -> None:
        page = make_page(["a", "b", "c"], PageParams(limit=2, after=None), "b")
        assert page.data == ["a", "b"]
        assert page.next_cursor is not None
        assert decode_cursor(page.next_cursor) == "b"

    def test_rows_up_to_the_limit_end_the_walk(self) -> None:
        page = make_page(["a", "b"], PageParams(limit=2, after=None), None)
        assert page.data == ["a", "b"]
        assert page.next_cursor is None

    def test_empty_page(self) -> None:
        page: Page[str] = make_page([], PageParams(limit=2, after=None), None)
        assert page.data == []
        assert page.next_cursor is None
