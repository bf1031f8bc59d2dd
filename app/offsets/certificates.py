"""Retirement certificates (HTML and PDF) and public claim pages (HTML).

Pure rendering: no database, no web framework. Every value a user typed (beneficiary names,
purpose details, subject names, …) is escaped by Jinja2's autoescape in the HTML and passed
as plain text to the PDF. The pages load nothing from outside (no fonts, scripts or images
from a CDN), work without JavaScript and print on A4.

Japanese in the PDF: fpdf2's built-in fonts cover only Windows-1252, and neither this project
nor its dependencies ship a font with Japanese glyphs. ``render_retirement_pdf`` therefore looks
for a Japanese TrueType font installed on the machine (``CJK_FONT_CANDIDATES``, e.g. Debian's
``fonts-ipaexfont-gothic``); with one it renders bilingual headings and Japanese text as is,
without one it renders English headings and replaces characters Windows-1252 cannot show with
``?``, with a footnote pointing to the online certificate, which shows them exactly.
"""

from __future__ import annotations

import calendar
import io
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import segno
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from app.offsets.schemas import PublicClaim, PublicRetirement

__all__ = [
    "CJK_FONT_CANDIDATES",
    "find_cjk_font",
    "format_grams",
    "format_tonnes",
    "render_claim_html",
    "render_retirement_html",
    "render_retirement_pdf",
]

JST = timezone(timedelta(hours=9), "JST")  # Japan has no daylight saving time
GRAMS_PER_TONNE = 1_000_000
TEMPLATES = Path(__file__).with_name("templates")

# Japanese TrueType fonts, in order of preference, at their Debian/Ubuntu package paths.
CJK_FONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"),  # fonts-ipaexfont-gothic
    Path("/usr/share/fonts/truetype/ipaexfont-gothic/ipaexg.ttf"),
    Path("/usr/share/fonts/opentype/ipafont-gothic/ipagp.ttf"),  # fonts-ipafont-gothic
    Path("/usr/share/fonts/truetype/ipafont-gothic/ipagp.ttf"),
    Path("/usr/share/fonts/truetype/takao-gothic/TakaoPGothic.ttf"),  # fonts-takao-gothic
    Path("/usr/share/fonts/truetype/vlgothic/VL-PGothic-Regular.ttf"),  # fonts-vlgothic
)

PURPOSES: dict[str, tuple[str, str]] = {
    "offset": ("カーボン・オフセット", "Carbon offset"),
    "law_reporting": ("温対法報告", "Reporting under the Global Warming Countermeasures Act"),
    "re100": ("RE100", "RE100 reporting"),
    "sbt": ("SBT", "SBT (Science Based Targets) reporting"),
    "other": ("その他", "Other"),
}

CATEGORIES: dict[str, tuple[str, str]] = {
    "energy_saving": ("省エネルギー", "Energy saving"),
    "renewable_power": ("再生可能エネルギー（発電）", "Renewable power"),
    "renewable_heat": ("再生可能エネルギー（熱）", "Renewable heat"),
    "forest": ("森林", "Forest"),
    "industrial": ("工業プロセス", "Industrial process"),
    "agriculture": ("農業", "Agriculture"),
    "waste": ("廃棄物", "Waste"),
    "other": ("その他", "Other"),
}

CLAIM_TYPES: dict[str, tuple[str, str]] = {
    "product": ("製品のオフセット", "Product"),
    "service": ("サービスのオフセット", "Service"),
    "event": ("会議・イベントのオフセット", "Event"),
    "organization": ("組織のオフセット", "Organisation"),
    "municipality": ("自治体のオフセット", "Municipality"),
}

_EN_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


# --- formatting helpers --------------------------------------------------------------------


def format_grams(grams: int) -> str:
    """``1234567`` → ``"1,234,567 g"``."""
    return f"{grams:,} g"


def format_tonnes(grams: int) -> str:
    """Grams as exact tonnes of CO2e, thousands separated: ``1234500`` → ``"1.2345 t-CO2e"``."""
    sign = "-" if grams < 0 else ""
    whole, frac = divmod(abs(grams), GRAMS_PER_TONNE)
    text = f"{sign}{whole:,}"
    if frac:
        text += "." + f"{frac:06d}".rstrip("0")
    return text + " t-CO2e"


def _percent_floor(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with one decimal, rounded down (never shows 100 % early)."""
    if whole <= 0:
        return "–"
    tenths = part * 1000 // whole
    return f"{tenths // 10:,}.{tenths % 10}%"


def _jst(value: datetime) -> datetime:
    if value.tzinfo is None:  # stored times are UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(JST)


def _date_ja(value: date) -> str:
    return f"{value.year}年{value.month}月{value.day}日"


def _date_en(value: date) -> str:
    return f"{value.day} {_EN_MONTHS[value.month - 1]} {value.year}"


@dataclass(frozen=True)
class _When:
    ja: str
    en: str
    iso: str


def _when(value: datetime) -> _When:
    local = _jst(value)
    return _When(_date_ja(local), _date_en(local), local.isoformat(timespec="seconds"))


def _parse_datetime(value: Any) -> _When | None:
    if isinstance(value, datetime):
        return _when(value)
    if isinstance(value, str):
        try:
            return _when(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _parse_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return _jst(value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _add_year(value: date) -> date:
    day = min(value.day, calendar.monthrange(value.year + 1, value.month)[1])
    return value.replace(year=value.year + 1, day=day)


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean(value: Any) -> str:
    """User text made safe to lay out: no control, bidi-override or surrogate characters."""
    text = "" if value is None else str(value)
    out = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(" ")
        elif ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
            continue
        else:
            out.append(ch)
    return "".join(out).strip()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _label(table: Mapping[str, tuple[str, str]], value: Any) -> tuple[str, str]:
    key = str(getattr(value, "value", value))
    return table.get(key, (_clean(key), _clean(key)))


def _vintage(vintage: Any) -> tuple[str, str]:
    number = _int(vintage)
    if number is None:
        return _clean(vintage), _clean(vintage)
    return f"{number}年度", f"FY{number} (April {number} – March {number + 1})"


def _certificate_path(code: str) -> str:
    return f"/v1/public/retirements/{quote(code, safe='')}/certificate"


def _qr(url: str) -> segno.QRCode:
    return segno.make(url or " ", error="m", micro=False)


def _qr_svg(url: str) -> Markup:
    # segno writes only geometry (no text from ``url``), so the SVG is safe to inline.
    return Markup(_qr(url).svg_inline(scale=1, border=2, omitsize=True, dark="#000", light="#fff"))


def _qr_png(url: str) -> io.BytesIO:
    buffer = io.BytesIO()
    _qr(url).save(buffer, kind="png", scale=10, border=2)
    buffer.seek(0)
    return buffer


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["grams"] = format_grams
    env.filters["tonnes"] = format_tonnes
    env.filters["thousands"] = lambda n: f"{n:,}"
    return env


# --- retirement certificate ----------------------------------------------------------------


@dataclass(frozen=True)
class _RetirementView:
    code: str
    beneficiary: str
    quantity: int
    purpose_ja: str
    purpose_en: str
    purpose_detail: str
    project_code: str
    project_name: str
    methodology: str
    category_ja: str
    category_en: str
    vintage_ja: str
    vintage_en: str
    serials: list[str]
    retired: _When
    retired_at: datetime
    retired_by: str
    verify_url: str


def _retirement_view(r: PublicRetirement, verify_url: str) -> _RetirementView:
    purpose_ja, purpose_en = _label(PURPOSES, r.purpose)
    category_ja, category_en = _label(CATEGORIES, r.category)
    vintage_ja, vintage_en = _vintage(r.vintage)
    return _RetirementView(
        code=_clean(r.code),
        beneficiary=_clean(r.beneficiary_name),
        quantity=r.quantity,
        purpose_ja=purpose_ja,
        purpose_en=purpose_en,
        purpose_detail=_clean(r.purpose_detail),
        project_code=_clean(r.project_code),
        project_name=_clean(r.project_name),
        methodology=_clean(r.methodology),
        category_ja=category_ja,
        category_en=category_en,
        vintage_ja=vintage_ja,
        vintage_en=vintage_en,
        serials=[_clean(s) for s in r.serial_display],
        retired=_when(r.retired_at),
        retired_at=_jst(r.retired_at),
        retired_by=_clean(r.retired_by),
        verify_url=verify_url,
    )


def render_retirement_html(r: PublicRetirement, *, verify_url: str) -> str:
    """A printable, bilingual (Japanese/English) retirement certificate as one HTML5 page."""
    return (
        _environment()
        .get_template("retirement_certificate.html")
        .render(r=_retirement_view(r, verify_url), qr_svg=_qr_svg(verify_url))
    )


# --- retirement certificate as PDF ---------------------------------------------------------


def find_cjk_font() -> Path | None:
    """The first readable Japanese TrueType font of ``CJK_FONT_CANDIDATES``, or None."""
    for path in CJK_FONT_CANDIDATES:
        try:
            if path.is_file() and path.stat().st_size > 0:
                return path
        except OSError:
            continue
    return None


_PDF_ASCII = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2212": "-",
        "\u30fc": "-",
        "\u3000": " ",
        "\u301c": "~",
        "\uff5e": "~",
    }
)

PDF_TEXT_LIMIT = 2000  # characters of one user field; the API accepts at most 500


def _pdf_clip(text: str) -> str:
    return text if len(text) <= PDF_TEXT_LIMIT else text[: PDF_TEXT_LIMIT - 1] + "…"


GREEN = (22, 84, 58)
GREY = (90, 90, 90)
LIGHT = (200, 212, 204)


class _CertificatePDF(FPDF):
    def __init__(self, footer_text: str) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.footer_text = footer_text
        self.cjk = False
        self.core_fonts_encoding = "windows-1252"
        self.replaced = False  # some user text lost characters the font cannot show
        self._glyphs: frozenset[int] = frozenset()

    def use_cjk_font(self, path: Path) -> None:
        self.add_font("jp", "", str(path))  # regular only: Japanese fonts ship no bold face
        font = self.fonts["jp"]
        self._glyphs = frozenset(getattr(font, "cmap", {}) or ())
        self.cjk = True

    def face(self, size: float, *, bold: bool = False, mono: bool = False) -> None:
        if mono:
            self.set_font("Courier", "B" if bold else "", size)
        elif self.cjk:
            self.set_font("jp", "", size)
        else:
            self.set_font("Helvetica", "B" if bold else "", size)

    def safe(self, value: str, *, user: bool = True) -> str:
        """``value`` with every character the current font cannot draw replaced by ``?``.

        A character the font lacks is first tried in its compatibility form (full-width
        letters, circled digits, …); ``user`` marks text whose loss earns the footnote.
        """
        out = []
        for ch in value:
            if ch == "\n" or self._drawable(ch):
                out.append(ch)
                continue
            alt = unicodedata.normalize("NFKC", ch).translate(_PDF_ASCII)
            if alt and all(self._drawable(a) for a in alt):
                out.append(alt)
            else:
                out.append("?")
                if user:
                    self.replaced = True
        return "".join(out)

    def _drawable(self, ch: str) -> bool:
        if self.is_ttf_font:
            return ord(ch) in self._glyphs or ch == " "
        try:
            ch.encode("windows-1252")
        except UnicodeEncodeError:
            return False
        return ch.isprintable()

    def header(self) -> None:
        self.set_draw_color(*GREEN)
        self.set_line_width(0.8)
        self.rect(8, 8, self.w - 16, self.h - 16)
        self.set_line_width(0.2)
        self.rect(10, 10, self.w - 20, self.h - 20)

    def footer(self) -> None:
        self.set_y(-13)
        self.face(7.5)
        self.set_text_color(*GREY)
        self.cell(0, 4, self.safe(self.footer_text, user=False), align="L")
        self.set_x(self.l_margin)
        self.cell(0, 4, f"{self.page_no()} / {{nb}}", align="R")


def _pdf_heading(pdf: _CertificatePDF, ja: str, en: str) -> None:
    if pdf.get_y() > pdf.h - pdf.b_margin - 22:  # keep a heading with what follows it
        pdf.add_page()
    pdf.ln(4)
    pdf.face(11, bold=True)
    pdf.set_text_color(*GREEN)
    pdf.cell(0, 6, f"{ja}  {en}" if pdf.cjk else en, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(*LIGHT)
    pdf.set_line_width(0.3)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(1.5)
    pdf.set_text_color(0, 0, 0)


def _pdf_rows(pdf: _CertificatePDF, rows: Sequence[tuple[str, str, str]]) -> None:
    """Label/value rows; long values wrap and continue on the next page."""
    label_w = 51.0
    value_w = pdf.w - pdf.l_margin - pdf.r_margin - label_w
    for ja, en, value in rows:
        if pdf.get_y() > pdf.page_break_trigger - 6:
            pdf.add_page()
        top = pdf.get_y()
        pdf.face(8)
        pdf.set_text_color(*GREY)
        label = f"{ja}  {en}" if pdf.cjk else en
        pdf.set_xy(pdf.l_margin, top + 0.4)
        pdf.cell(label_w, 5, pdf.safe(label, user=False))
        pdf.face(9.5)
        pdf.set_text_color(0, 0, 0)
        pdf.set_xy(pdf.l_margin + label_w, top)
        pdf.multi_cell(
            value_w,
            5.2,
            pdf.safe(_pdf_clip(value) or "–"),
            align="L",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        pdf.ln(1.6)


def _build_pdf(view: _RetirementView, font: Path | None) -> bytes:
    pdf = _CertificatePDF(footer_text=f"Tanso · J-Credit retirement certificate {view.code}")
    if font is not None:
        try:
            pdf.use_cjk_font(font)
        except Exception:  # an unreadable or unusual font: fall back to English
            pdf = _CertificatePDF(footer_text=pdf.footer_text)
    pdf.set_title(pdf.safe(f"Retirement certificate {view.code}", user=False))
    pdf.set_author("Tanso")
    pdf.set_creation_date(view.retired_at)  # the same certificate gives the same bytes
    pdf.set_subject("J-Credit retirement certificate")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    # Header: titles left, QR right.
    qr_size = 34.0
    qr_x = pdf.w - pdf.r_margin - qr_size
    pdf.image(_qr_png(view.verify_url), x=qr_x, y=pdf.t_margin, w=qr_size, h=qr_size)
    if view.verify_url:
        pdf.link(qr_x, pdf.t_margin, qr_size, qr_size, view.verify_url)
    pdf.set_xy(qr_x - 6, pdf.t_margin + qr_size)
    pdf.face(7)
    pdf.set_text_color(*GREY)
    pdf.cell(qr_size + 12, 4, "検証 / Scan to verify" if pdf.cjk else "Scan to verify", align="C")

    head_w = width - qr_size - 6
    pdf.set_xy(pdf.l_margin, pdf.t_margin)
    pdf.face(8.5, bold=True)
    pdf.set_text_color(*GREEN)
    pdf.cell(head_w, 5, "TANSO  ·  J-CREDIT", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_text_color(0, 0, 0)
    if pdf.cjk:
        pdf.face(22, bold=True)
        pdf.cell(head_w, 11, "無効化証明書", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.face(13)
        pdf.cell(head_w, 7, "Retirement Certificate", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    else:
        pdf.face(22, bold=True)
        pdf.cell(head_w, 11, "Retirement Certificate", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.face(11)
        pdf.set_text_color(*GREY)
        pdf.cell(
            head_w,
            6,
            "J-Credit scheme · record of cancellation",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    pdf.ln(2)
    pdf.face(9)
    pdf.set_text_color(*GREY)
    pdf.cell(head_w, 5, "証明書番号 Certificate No." if pdf.cjk else "Certificate No.")
    pdf.set_xy(pdf.l_margin, pdf.get_y() + 5)
    pdf.face(12, bold=True, mono=True)
    pdf.set_text_color(0, 0, 0)
    pdf.multi_cell(
        head_w, 6, pdf.safe(_pdf_clip(view.code)), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    pdf.set_y(max(pdf.get_y(), pdf.t_margin + qr_size + 6))

    # Statement.
    pdf.ln(2)
    pdf.set_text_color(40, 40, 40)
    if pdf.cjk:
        pdf.face(9.5)
        pdf.multi_cell(
            width,
            5,
            "下記の J-クレジットは無効化されました。無効化されたクレジットは移転・再使用できません。",
            align="L",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    pdf.face(9.5)
    pdf.multi_cell(
        width,
        5,
        "This certifies that the J-Credits below have been permanently retired (cancelled). "
        "Retired credits cannot be transferred or used again.",
        align="L",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )

    # Beneficiary and quantity.
    pdf.ln(4)
    box_top = pdf.get_y()
    pdf.set_fill_color(240, 246, 242)
    pdf.face(8.5)
    pdf.set_text_color(*GREY)
    pdf.set_x(pdf.l_margin + 4)
    label = "クレジット利用者  Beneficiary" if pdf.cjk else "Beneficiary"
    pdf.cell(width - 8, 6, label, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.face(16, bold=True)
    pdf.set_text_color(0, 0, 0)
    pdf.set_x(pdf.l_margin + 4)
    pdf.multi_cell(
        width - 8,
        8,
        pdf.safe(_pdf_clip(view.beneficiary)),
        align="L",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.ln(1)
    pdf.face(8.5)
    pdf.set_text_color(*GREY)
    pdf.set_x(pdf.l_margin + 4)
    label = "無効化量  Quantity retired" if pdf.cjk else "Quantity retired"
    pdf.cell(width - 8, 6, label, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.face(16, bold=True)
    pdf.set_text_color(*GREEN)
    pdf.set_x(pdf.l_margin + 4)
    credits = "credit" if view.quantity == 1 else "credits"
    pdf.cell(
        width - 8,
        9,
        f"{view.quantity:,} t-CO2e  ({view.quantity:,} {credits})",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    box_bottom = pdf.get_y() + 2
    if pdf.page_no() == 1 and box_bottom < pdf.h - pdf.b_margin:
        pdf.set_draw_color(*LIGHT)
        pdf.set_line_width(0.4)
        pdf.line(pdf.l_margin, box_top, pdf.l_margin, box_bottom)
    pdf.set_y(box_bottom)
    pdf.set_text_color(0, 0, 0)

    # Retirement.
    _pdf_heading(pdf, "無効化", "Retirement")
    retired = f"{view.retired.ja}  ({view.retired.iso})" if pdf.cjk else view.retired.en
    if not pdf.cjk:
        retired += f"  ({view.retired.iso})"
    purpose = f"{view.purpose_ja} / {view.purpose_en}" if pdf.cjk else view.purpose_en
    _pdf_rows(
        pdf,
        [
            ("用途", "Purpose", purpose),
            ("目的詳細", "Purpose detail", view.purpose_detail),
            ("無効化日", "Retired on (JST)", retired),
            ("無効化実施者", "Retired by", view.retired_by),
        ],
    )

    # Project.
    _pdf_heading(pdf, "プロジェクト", "Project")
    category = f"{view.category_ja} / {view.category_en}" if pdf.cjk else view.category_en
    vintage = f"{view.vintage_ja} / {view.vintage_en}" if pdf.cjk else view.vintage_en
    _pdf_rows(
        pdf,
        [
            ("プロジェクト番号", "Project code", view.project_code),
            ("プロジェクト名", "Project name", view.project_name),
            ("方法論", "Methodology", view.methodology),
            ("区分", "Category", category),
            ("ヴィンテージ", "Vintage", vintage),
        ],
    )

    # Serial numbers.
    _pdf_heading(pdf, "シリアル番号", "Serial numbers")
    pdf.face(9, mono=True)
    for serial in view.serials or ["–"]:
        pdf.multi_cell(
            width, 5, pdf.safe(_pdf_clip(serial)), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )

    # Verification.
    _pdf_heading(pdf, "検証", "Verification")
    pdf.face(8.5)
    pdf.set_text_color(40, 40, 40)
    pdf.multi_cell(
        width,
        4.5,
        "Scan the QR code or open this address to see the retirement in the public record:",
        align="L",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    pdf.set_text_color(*GREEN)
    pdf.multi_cell(
        width,
        4.5,
        pdf.safe(view.verify_url, user=False),
        link=view.verify_url or None,
        align="L",
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    if pdf.replaced:
        pdf.ln(2)
        pdf.set_text_color(*GREY)
        pdf.face(7.5)
        pdf.multi_cell(
            width,
            4,
            "Characters that this PDF's font cannot show are printed as '?'. The online "
            "certificate at the address above shows every name exactly as recorded.",
            align="L",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    return bytes(pdf.output())


def render_retirement_pdf(
    r: PublicRetirement,
    *,
    verify_url: str,
    cjk_font: Path | Literal[False] | None = None,
) -> bytes:
    """The retirement certificate as a one-page (longer if needed) A4 PDF.

    ``cjk_font``: None looks for a Japanese font on this machine (``find_cjk_font``); a path
    uses that TrueType font; False renders English only. Without a usable Japanese font the
    headings are English and unsupported characters in user text print as ``?``.
    """
    view = _retirement_view(r, verify_url)
    font = find_cjk_font() if cjk_font is None else (cjk_font or None)
    try:
        return _build_pdf(view, font)
    except Exception:
        if font is None:
            raise
        return _build_pdf(view, None)  # a font that loads but fails to lay out


# --- public claim page ---------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _extra_value(value: Any) -> str:
    if isinstance(value, str):
        return _clean(value)
    return _clean(json.dumps(value, ensure_ascii=False, sort_keys=True))


def _claim_retirements(items: Iterable[Any], deadline: date | None) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        raw = _dict(item)
        code = _clean(raw.get("code"))
        retired = _parse_datetime(raw.get("retired_at"))
        retired_day = _parse_date(raw.get("retired_at"))
        category_ja, category_en = _label(CATEGORIES, raw.get("category"))
        purpose_ja, purpose_en = _label(PURPOSES, raw.get("purpose"))
        vintage_ja, vintage_en = _vintage(raw.get("vintage"))
        rows.append(
            {
                "code": code,
                "certificate_url": _certificate_path(code) if code else None,
                "grams": _int(raw.get("grams")),
                "quantity": _int(raw.get("quantity")),
                "project_code": _clean(raw.get("project_code")),
                "project_name": _clean(raw.get("project_name")),
                "methodology": _clean(raw.get("methodology")),
                "category_ja": category_ja,
                "category_en": category_en,
                "vintage_ja": vintage_ja,
                "vintage_en": vintage_en,
                "serials": [_clean(s) for s in _list(raw.get("serial_display"))],
                "retired": retired,
                "retired_raw": _clean(raw.get("retired_at")),
                "beneficiary": _clean(raw.get("beneficiary_name")),
                "purpose_ja": purpose_ja,
                "purpose_en": purpose_en,
                "within_deadline": (
                    None if deadline is None or retired_day is None else retired_day <= deadline
                ),
            }
        )
    return rows


def _claim_view(c: PublicClaim, verify_url: str, public_key_url: str) -> dict[str, Any]:
    doc = _dict(c.document)
    subject = _dict(doc.get("subject"))
    period = _dict(doc.get("period"))
    claimant = _dict(doc.get("claimant"))
    pool = doc.get("pool")
    pool = _dict(pool) if pool is not None else None
    footprint = _int(doc.get("footprint_g"))
    covered = _int(doc.get("covered_g"))
    start = _parse_date(period.get("start"))
    end = _parse_date(period.get("end"))
    deadline = _add_year(end) if end is not None else None
    retirements = _claim_retirements(_list(doc.get("retirements")), deadline)
    timing = [r["within_deadline"] for r in retirements if r["within_deadline"] is not None]
    type_ja, type_en = _label(CLAIM_TYPES, doc.get("claim_type"))
    code = _clean(c.code)
    percent = None
    bar = 0
    if footprint and covered is not None:
        percent = _percent_floor(covered, footprint)
        bar = max(0, min(100, covered * 100 // footprint))
    snippet_file = f"{code or 'claim'}.json"
    return {
        "code": code,
        "revoked": str(getattr(c.status, "value", c.status)) == "revoked",
        "revoked_reason": _clean(c.revoked_reason),
        "type_ja": type_ja,
        "type_en": type_en,
        "subject_name": _clean(subject.get("name")),
        "subject_description": _clean(subject.get("description")),
        "subject_unit": _clean(subject.get("unit")),
        "subject_extra": [
            (_clean(k), _extra_value(v))
            for k, v in sorted(subject.items())
            if k not in ("name", "description", "unit")
        ],
        "period_start": start,
        "period_end": end,
        "period_start_ja": _date_ja(start) if start else "",
        "period_end_ja": _date_ja(end) if end else "",
        "deadline": deadline,
        "timing_all_met": all(timing) if timing else None,
        "timing_late": sum(1 for t in timing if not t),
        "claimant_name": _clean(claimant.get("name")),
        "claimant_id": _clean(claimant.get("organization_id")),
        "footprint": footprint,
        "covered": covered,
        "percent": percent,
        "bar": bar,
        "fully_covered": footprint is not None and covered is not None and covered >= footprint,
        "pool_code": _clean(pool.get("code")) if pool is not None else "",
        "pool_name": _clean(pool.get("name")) if pool is not None else "",
        "is_unit": pool is not None or "reference" in doc,
        "reference": _clean(doc.get("reference")),
        "issued": _parse_datetime(doc.get("issued_at")),
        "retirements": retirements,
        "signature": c.signature,
        "key_id": c.key_id,
        "algorithm": c.algorithm,
        "public_key_url": public_key_url,
        "canonical": c.canonical,
        "canonical_href": "data:application/json;charset=utf-8," + quote(c.canonical, safe=""),
        "snippet_file": snippet_file,
        "verify_url": verify_url,
    }


def render_claim_html(c: PublicClaim, *, verify_url: str, public_key_url: str) -> str:
    """The public page of a signed claim: facts, retirements, signature and how to verify it."""
    view = _claim_view(c, verify_url, public_key_url)
    return _environment().get_template("claim.html").render(c=view, qr_svg=_qr_svg(verify_url))
