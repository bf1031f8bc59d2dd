"""The pure checks on Japanese identifiers: 法人番号 check digits and JIS prefecture codes."""

from __future__ import annotations

import pytest

from app.accounts.validation import (
    corporate_number_check_digit,
    is_valid_corporate_number,
    is_valid_prefecture,
)

_FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


def _reference_check_digit(base12: str) -> int:
    """The National Tax Agency's rule, written out independently: weights 2,1,2,1,… from the left."""
    weights = [2, 1] * 6
    return 9 - sum(int(d) * w for d, w in zip(base12, weights, strict=True)) % 9


class TestCorporateNumberCheckDigit:
    @pytest.mark.parametrize(
        ("number", "check"),
        [
            ("7000012050002", 7),  # 国税庁
            ("1180301018771", 1),  # トヨタ自動車
            ("5010401067252", 5),  # ソニーグループ
            ("9000000000000", 9),  # weighted sum divisible by 9 gives 9, never 0
        ],
    )
    def test_known_numbers(self, number: str, check: int) -> None:
        assert corporate_number_check_digit(number[1:]) == check

    @pytest.mark.parametrize(
        "base12", ["000000000000", "123456789012", "999999999999", "000012050002", "314159265358"]
    )
    def test_agrees_with_reference(self, base12: str) -> None:
        assert corporate_number_check_digit(base12) == _reference_check_digit(base12)


class TestIsValidCorporateNumber:
    @pytest.mark.parametrize(
        "number", ["7000012050002", "1180301018771", "5010401067252", "9000000000000"]
    )
    def test_valid(self, number: str) -> None:
        assert is_valid_corporate_number(number)

    @pytest.mark.parametrize("first", [d for d in "0123456789" if d != "7"])
    def test_any_other_check_digit_is_invalid(self, first: str) -> None:
        assert not is_valid_corporate_number(first + "000012050002")

    @pytest.mark.parametrize(
        "number",
        [
            "",
            "700001205000",  # 12 digits
            "70000120500020",  # 14 digits
            "700001205000A",
            "7000012050002\n",  # `$` would match before this newline
            " 7000012050002",
            "7000012050002".translate(_FULL_WIDTH),  # full-width digits
            "7000-0120-5000",
        ],
    )
    def test_malformed(self, number: str) -> None:
        assert not is_valid_corporate_number(number)


class TestIsValidPrefecture:
    @pytest.mark.parametrize("code", [f"{n:02d}" for n in range(1, 48)])
    def test_all_47_codes(self, code: str) -> None:
        assert is_valid_prefecture(code)

    @pytest.mark.parametrize(
        "code",
        ["", "00", "48", "99", "1", "013", "13\n", " 13", "13".translate(_FULL_WIDTH), "1a", "-1"],
    )
    def test_invalid(self, code: str) -> None:
        assert not is_valid_prefecture(code)
