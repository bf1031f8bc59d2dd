"""Retirement certificates (HTML, PDF) and public claim pages: pure rendering, no database."""

from __future__ import annotations

import html
import io
import json
import re
import urllib.request
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import segno
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from markupsafe import escape

from app.offsets.certificates import (
    PURPOSES,
    find_cjk_font,
    format_grams,
    format_tonnes,
    render_claim_html,
    render_retirement_html,
    render_retirement_pdf,
)
from app.offsets.models import Category, ClaimStatus, Purpose
from app.offsets.schemas import PublicClaim, PublicRetirement
from app.offsets.signing import SigningKey, b64url, canonical_json

VERIFY = "https://tanso.example/v1/public/retirements/RT-7K3M-9Q2X-PA4D"
CLAIM_VERIFY = "https://tanso.example/v1/public/claims/CL-AAAA-BBBB-CCCC"
KEY_URL = "https://tanso.example/v1/public/keys/0123456789abcdef"
SERIALS = [
    "JCR-P0042-2024-000000001-000001000",
    "JCR-P0042-2024-000002001-000002250",
]
HOSTILE = '<script>alert("x")</script>'


def retirement(**changes: Any) -> PublicRetirement:
    values: dict[str, Any] = {
        "code": "RT-7K3M-9Q2X-PA4D",
        "batch_id": uuid.UUID("0190f1a2-0000-7000-8000-000000000001"),
        "project_code": "P0042",
        "project_name": "陸前高田市 市有林森林経営プロジェクト",
        "methodology": "FO-001",
        "category": Category.forest,
        "vintage": 2024,
        "quantity": 1250,
        "serial_ranges": [[1, 1000], [2001, 2250]],
        "serial_display": SERIALS,
        "purpose": Purpose.offset,
        "purpose_detail": "2026年度 本社ビルの電力使用に伴う排出のオフセット",
        "beneficiary_name": "株式会社サンプル商事",
        "retired_by": "Sample Trading Co., Ltd.",
        "retired_at": datetime(2026, 11, 28, 8, 40, tzinfo=UTC),
        "certificate_url": "/v1/public/retirements/RT-7K3M-9Q2X-PA4D/certificate",
    }
    values.update(changes)
    return PublicRetirement(**values)


def claim_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "code": "CL-AAAA-BBBB-CCCC",
        "claim_type": "product",
        "subject": {"name": "有機コーヒー豆 1kg", "unit": "1 bag", "sku": "COF-001"},
        "footprint_g": 12_345_678,
        "covered_g": 12_345_678,
        "period": {"start": "2025-04-01", "end": "2026-03-31"},
        "claimant": {
            "organization_id": "0190f1a2-0000-7000-8000-0000000000aa",
            "name": "Sample Coffee KK",
        },
        "retirements": [
            {
                "code": "RT-7K3M-9Q2X-PA4D",
                "grams": 12_345_678,
                "quantity": 1250,
                "project_code": "P0042",
                "project_name": "陸前高田市 市有林森林経営プロジェクト",
                "methodology": "FO-001",
                "category": "forest",
                "vintage": 2024,
                "serial_display": SERIALS,
                "serial_ranges": [[1, 1000], [2001, 2250]],
                "retired_at": "2026-11-28T08:40:00+00:00",
                "beneficiary_name": "Sample Coffee KK",
                "purpose": "offset",
            }
        ],
        "issued_at": "2026-11-28T09:00:00+00:00",
        "verification_url": CLAIM_VERIFY,
    }
    document.update(changes)
    return document


def claim(
    document: dict[str, Any] | None = None,
    *,
    key: SigningKey | None = None,
    status: ClaimStatus = ClaimStatus.active,
    revoked_reason: str | None = None,
) -> PublicClaim:
    document = claim_document() if document is None else document
    key = key or SigningKey(Ed25519PrivateKey.generate())
    canonical = canonical_json(document)
    return PublicClaim(
        code=str(document.get("code", "CL-AAAA-BBBB-CCCC")),
        status=status,
        revoked_reason=revoked_reason,
        document=document,
        canonical=canonical,
        signature=key.sign(canonical),
        key_id=key.key_id,
        algorithm="Ed25519",
        public_key_url=KEY_URL,
    )


class _TagBalance(HTMLParser):
    """Checks that every non-void element is closed, in order."""

    VOID = frozenset(
        "area base br col embed hr img input link meta source track wbr".split()  # noqa: SIM905
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()


def assert_well_formed(page: str) -> _TagBalance:
    assert page.startswith("<!DOCTYPE html>")
    parser = _TagBalance()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


def assert_self_contained(page: str) -> None:
    """No script, no external resource: the page loads nothing and runs nothing."""
    parsed = assert_well_formed(page)
    for tag in ("script", "link", "img", "iframe", "object", "embed", "style"):
        assert parsed.tags.count(tag) == (1 if tag == "style" else 0), tag
    for name, value in parsed.attrs:
        assert name not in ("src", "srcset", "style") or (name == "style" and "url(" not in value)
        assert not name.startswith("on"), name
        if name == "href":
            assert value.startswith(
                ("https://tanso.example/", "/v1/public/", "data:application/json")
            )
    style = page[page.index("<style>") : page.index("</style>")]
    assert "@import" not in style
    assert "url(" not in style


# --- formatting ----------------------------------------------------------------------------


def test_format_grams_and_tonnes() -> None:
    assert format_grams(12_345_678) == "12,345,678 g"
    assert format_tonnes(12_345_678) == "12.345678 t-CO2e"
    assert format_tonnes(1_234_500_000) == "1,234.5 t-CO2e"
    assert format_tonnes(3_000_000) == "3 t-CO2e"
    assert format_tonnes(1) == "0.000001 t-CO2e"


# --- retirement certificate: HTML ----------------------------------------------------------


def test_retirement_html_shows_the_key_facts() -> None:
    page = render_retirement_html(retirement(), verify_url=VERIFY)
    assert_self_contained(page)
    assert "無効化証明書" in page
    assert "Retirement Certificate" in page
    assert "株式会社サンプル商事" in page
    assert "1,250 t-CO2e" in page
    for serial in SERIALS:
        assert serial in page
    assert "RT-7K3M-9Q2X-PA4D" in page
    assert "カーボン・オフセット" in page
    assert "2026年度 本社ビルの電力使用に伴う排出のオフセット" in page
    assert "陸前高田市 市有林森林経営プロジェクト" in page
    assert "P0042" in page
    assert "FO-001" in page
    assert "森林" in page
    assert "2024年度" in page
    assert "Sample Trading Co., Ltd." in page
    # 08:40 UTC is 17:40 in Tokyo, same day.
    assert "2026年11月28日" in page
    assert "2026-11-28T17:40:00+09:00" in page
    assert f'href="{VERIFY}"' in page
    assert "@media print" in page
    assert "size: A4" in page


def test_retirement_html_qr_encodes_the_verify_url() -> None:
    page = render_retirement_html(retirement(), verify_url=VERIFY)
    expected = segno.make(VERIFY, error="m", micro=False).svg_inline(
        scale=1, border=2, omitsize=True, dark="#000", light="#fff"
    )
    assert "<svg" in page
    assert expected in page


def test_retirement_date_is_shown_in_tokyo_time() -> None:
    late_evening_utc = datetime(2026, 11, 27, 20, 5, tzinfo=UTC)
    page = render_retirement_html(retirement(retired_at=late_evening_utc), verify_url=VERIFY)
    assert "2026年11月28日" in page
    assert "2026-11-28T05:05:00+09:00" in page
    naive = render_retirement_html(
        retirement(retired_at=datetime(2026, 11, 27, 20, 5)),  # noqa: DTZ001 - taken as UTC
        verify_url=VERIFY,
    )
    assert "2026-11-28T05:05:00+09:00" in naive


@pytest.mark.parametrize("purpose", list(Purpose))
def test_every_purpose_has_a_japanese_label(purpose: Purpose) -> None:
    page = render_retirement_html(retirement(purpose=purpose), verify_url=VERIFY)
    ja, en = PURPOSES[purpose.value]
    assert ja in page
    assert en in page


def test_retirement_html_escapes_user_text() -> None:
    r = retirement(
        beneficiary_name=HOSTILE,
        purpose_detail='"><img src=x onerror=alert(1)>',
        project_name="<b>bold</b>",
        retired_by="Tom & Jerry",
    )
    page = render_retirement_html(r, verify_url=VERIFY)
    assert_self_contained(page)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>bold</b>" not in page
    assert "Tom &amp; Jerry" in page


def test_retirement_html_survives_odd_input() -> None:
    r = retirement(
        beneficiary_name="\u202eevil\u202c \x00\x07 名前 🌲🌏" + "x" * 5000,
        purpose_detail=None,
        project_name="",
        retired_by="",
        serial_display=[],
    )
    page = render_retirement_html(r, verify_url=VERIFY)
    assert_self_contained(page)
    assert "\u202e" not in page
    assert "\x00" not in page
    assert "名前 🌲🌏" in page


# --- retirement certificate: PDF -----------------------------------------------------------


def assert_pdf(data: bytes) -> None:
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert len(data) > 2500


def test_retirement_pdf_in_english_only() -> None:
    data = render_retirement_pdf(retirement(), verify_url=VERIFY, cjk_font=False)
    assert_pdf(data)
    assert b"/Count 1" in data  # one page
    assert b"/Subtype /Image" in data  # the QR code
    assert VERIFY.encode() in data  # the verify link annotation


def test_retirement_pdf_is_reproducible() -> None:
    first = render_retirement_pdf(retirement(), verify_url=VERIFY, cjk_font=False)
    second = render_retirement_pdf(retirement(), verify_url=VERIFY, cjk_font=False)
    assert first == second


ODD_NAMES = [
    "株式会社サンプル商事",
    "Café 🌲🌏 Zürich 👩‍👩‍👧",
    "\u202eevil\u202c \x00\x07\x1b[31m tab\there",
    "W" * 5000,
    "長い名前" * 500,
    "\uff8a\uff9d\uff76\uff78 \uff26\uff35\uff2c\uff2c \u2460\u2461",  # half/full width
    HOSTILE,
    "Łódź — “quoted” … €",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_retirement_pdf_never_raises_on_odd_text(name: str) -> None:
    r = retirement(
        beneficiary_name=name,
        purpose_detail=name,
        project_name=name,
        retired_by=name,
        code="RT-" + name[:50],
    )
    assert_pdf(render_retirement_pdf(r, verify_url=VERIFY, cjk_font=False))


def test_retirement_pdf_with_many_serials_spans_pages() -> None:
    serials = [f"JCR-P0042-2024-{i * 10:09d}-{i * 10 + 4:09d}" for i in range(300)]
    r = retirement(serial_display=serials, serial_ranges=[[0, 1]] * 300, purpose_detail=None)
    data = render_retirement_pdf(r, verify_url=VERIFY, cjk_font=False)
    assert_pdf(data)
    assert b"/Count 1" not in data


def test_retirement_pdf_falls_back_when_the_font_is_unusable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    data = render_retirement_pdf(retirement(), verify_url=VERIFY, cjk_font=broken)
    assert_pdf(data)
    assert data == render_retirement_pdf(retirement(), verify_url=VERIFY, cjk_font=False)


def test_retirement_pdf_with_the_default_font_choice() -> None:
    assert_pdf(render_retirement_pdf(retirement(beneficiary_name="名前 🌲"), verify_url=VERIFY))


@pytest.mark.skipif(find_cjk_font() is None, reason="no Japanese TrueType font on this machine")
@pytest.mark.parametrize("name", ODD_NAMES)
def test_retirement_pdf_with_a_japanese_font(name: str) -> None:
    font = find_cjk_font()
    assert font is not None
    r = retirement(beneficiary_name=name, purpose_detail=name, retired_by=name)
    data = render_retirement_pdf(r, verify_url=VERIFY, cjk_font=font)
    assert_pdf(data)
    assert b"/FontFile2" in data  # the embedded (subset) Japanese font


# --- claim page ----------------------------------------------------------------------------


def test_claim_page_shows_the_claim() -> None:
    c = claim()
    page = render_claim_html(c, verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert_self_contained(page)
    assert "CL-AAAA-BBBB-CCCC" in page
    assert "有機コーヒー豆 1kg" in page
    assert "COF-001" in page  # extra subject fields
    assert "製品のオフセット" in page
    assert "Sample Coffee KK" in page
    assert "2025年4月1日" in page
    assert "2026年3月31日" in page
    assert "12,345,678 g" in page
    assert "12.345678 t-CO2e" in page
    assert "100.0%" in page
    assert "有効" in page
    assert "ACTIVE" in page
    assert "REVOKED" not in page
    for serial in SERIALS:
        assert serial in page
    assert 'href="/v1/public/retirements/RT-7K3M-9Q2X-PA4D/certificate"' in page
    assert c.signature in page
    assert c.key_id in page
    assert "Ed25519" in page
    assert f'href="{KEY_URL}"' in page
    assert str(escape(c.canonical)) in page
    assert "<svg" in page
    assert "from cryptography" in page
    assert "All credits were retired no later than 12 months" in page


def test_claim_page_shows_partial_coverage_rounded_down() -> None:
    doc = claim_document(footprint_g=3_000_000, covered_g=2_999_999)
    page = render_claim_html(claim(doc), verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert "99.9%" in page
    assert "100.0%" not in page
    assert "fully offset" not in page


def test_claim_page_shows_revocation_prominently() -> None:
    c = claim(status=ClaimStatus.revoked, revoked_reason="Footprint was mis-stated <b>x</b>")
    page = render_claim_html(c, verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert_well_formed(page)
    assert "REVOKED" in page
    assert "取消済み" in page
    assert "Footprint was mis-stated &lt;b&gt;x&lt;/b&gt;" in page
    assert 'class="status revoked"' in page
    assert "ACTIVE" not in page
    assert page.index("REVOKED") < page.index("有機コーヒー豆")
    assert "<title>[取消済み REVOKED]" in page
    assert "fully offset" not in page


def test_claim_page_for_a_unit_claim_shows_pool_and_reference() -> None:
    doc = claim_document(
        pool={"code": "PL-1111-2222-3333", "name": "Coffee bags FY2026"},
        reference="ORDER-2026-0001",
        footprint_g=850,
        covered_g=850,
        claim_type="product",
    )
    del doc["period"]
    doc["retirements"][0]["grams"] = 850
    page = render_claim_html(claim(doc), verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert_self_contained(page)
    assert "PL-1111-2222-3333" in page
    assert "Coffee bags FY2026" in page
    assert "ORDER-2026-0001" in page
    assert "850 g" in page
    assert "0.00085 t-CO2e" in page
    assert "Footprint of this unit" in page


def test_claim_page_escapes_user_text() -> None:
    doc = claim_document(
        subject={"name": HOSTILE, "description": "<img src=x>", "evil": "<svg onload=x>"},
        claimant={"organization_id": "x", "name": "<i>co</i>"},
    )
    doc["retirements"][0]["beneficiary_name"] = HOSTILE
    doc["retirements"][0]["code"] = 'RT-"><script>'
    page = render_claim_html(claim(doc), verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert_self_contained(page)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<img" not in page
    assert "<svg onload" not in page
    assert "<i>co</i>" not in page
    assert "/v1/public/retirements/RT-%22%3E%3Cscript%3E/certificate" in page


def test_claim_page_flags_late_retirements() -> None:
    doc = claim_document()
    doc["retirements"][0]["retired_at"] = (
        "2027-04-01T00:00:00+09:00"  # period end + 12 months + 1 day
    )
    page = render_claim_html(claim(doc), verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    assert "1 retirement(s) came later than 12 months after the period end (2027-03-31)" in page


def test_claim_page_survives_a_sparse_document() -> None:
    page = render_claim_html(
        claim({"code": "CL-X", "subject": "not a dict", "retirements": [None, {"grams": "1"}]}),
        verify_url=CLAIM_VERIFY,
        public_key_url=KEY_URL,
    )
    assert_self_contained(page)
    assert "CL-X" in page


def _snippet(page: str) -> str:
    match = re.search(r'<pre id="verify-snippet"[^>]*><code>(.*?)</code></pre>', page, re.S)
    assert match is not None
    return html.unescape(match.group(1))


def test_the_verify_snippet_verifies_the_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = SigningKey(Ed25519PrivateKey.generate())
    c = claim(claim_document(subject={"name": "ラベル <&> 🌲"}), key=key)
    page = render_claim_html(c, verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    snippet = _snippet(page)
    assert 10 <= len(snippet.strip().splitlines()) <= 12

    def urlopen(url: str) -> io.BytesIO:
        assert url == KEY_URL
        return io.BytesIO(
            json.dumps({"key_id": key.key_id, "public_key": b64url(key.public_raw)}).encode()
        )

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / f"{c.code}.json"
    # The page's canonical <pre>, as a reader would copy it.
    match = re.search(r'<pre class="canonical" id="canonical">(.*?)</pre>', page, re.S)
    assert match is not None
    saved.write_text(html.unescape(match.group(1)) + "\n", encoding="utf-8")
    exec(compile(snippet, "snippet", "exec"), {})
    assert capsys.readouterr().out.strip() == f"valid: {c.code}"

    saved.write_text(c.canonical.replace("ラベル", "ラベル!"), encoding="utf-8")
    with pytest.raises(InvalidSignature):
        exec(compile(snippet, "snippet", "exec"), {})


def test_the_canonical_download_link_carries_the_exact_bytes() -> None:
    c = claim(claim_document(subject={"name": "名前 & <x> 100%"}))
    page = render_claim_html(c, verify_url=CLAIM_VERIFY, public_key_url=KEY_URL)
    match = re.search(r'href="data:application/json;charset=utf-8,([^"]*)"', page)
    assert match is not None
    assert unquote(html.unescape(match.group(1))) == c.canonical
