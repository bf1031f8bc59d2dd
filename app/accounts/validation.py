"""Pure checks on Japanese identifiers."""

from __future__ import annotations

import re

_CORPORATE_NUMBER = re.compile(r"[0-9]{13}")
_PREFECTURE = re.compile(r"0[1-9]|[1-3][0-9]|4[0-7]")


def corporate_number_check_digit(base12: str) -> int:
    """法人番号: the leading check digit of a 13-digit corporate number.

    With P(n) the n-th of the 12 base digits counted from the right, and Q(n) = 1 for odd n
    and 2 for even n: check = 9 - (Σ P(n)·Q(n) mod 9)  (National Tax Agency specification).
    """
    total = sum(int(d) * (1 if n % 2 else 2) for n, d in enumerate(reversed(base12), start=1))
    return 9 - total % 9


def is_valid_corporate_number(value: str) -> bool:
    # fullmatch, not match: ``$`` also matches before a trailing newline.
    return bool(_CORPORATE_NUMBER.fullmatch(value)) and int(
        value[0]
    ) == corporate_number_check_digit(value[1:])


def is_valid_prefecture(value: str) -> bool:
    """JIS X 0401 prefecture code, two digits, 01 (Hokkaido) to 47 (Okinawa)."""
    return bool(_PREFECTURE.fullmatch(value))
