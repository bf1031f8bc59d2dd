"""Shared input checks."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError

from app.core.validation import PlainText, reject_control_characters


class _Model(BaseModel):
    text: Annotated[str, PlainText]


class TestRejectControlCharacters:
    @pytest.mark.parametrize("value", ["", "plain", "東京都 港区", "tab-free — dash", "emoji 🌱"])
    def test_plain_text_passes(self, value: str) -> None:
        assert reject_control_characters(value) == value
        assert _Model(text=value).text == value

    @pytest.mark.parametrize(
        "value", ["\x00", "a\nb", "a\tb", "\x1b[31m", "\x7f", "\x85", "\ud800"]
    )
    def test_control_characters_and_lone_surrogates_fail(self, value: str) -> None:
        with pytest.raises(ValueError, match="control characters"):
            reject_control_characters(value)
        with pytest.raises(ValidationError):
            _Model(text=value)
