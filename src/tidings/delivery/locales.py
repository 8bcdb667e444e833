"""Locales (docs/pipeline.md, "Locales"): a user's locale, the fallback chain through a
template's translations, and the template filters that format dates, times and numbers for the
locale a message is rendered in (Babel's CLDR data).

A locale is a BCP 47 tag as Babel knows it, kept in normal form (``fr``, ``fr-CA``,
``zh-Hant-TW``). A user in ``fr-CA`` gets the template's ``fr-CA`` translation, else its ``fr``
one, else its default content; their dates and numbers are formatted for ``fr-CA`` whichever
translation was chosen, and for the template's own locale when none was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import pass_context
from jinja2.runtime import Context

from tidings.errors import InvalidArgument

#: the locale of a template that names none, and of rendering without any
DEFAULT_LOCALE = "en"
#: the longest locale tag taken (BCP 47 tags are short; this bounds what is parsed)
MAX_LOCALE_LENGTH = 35


def check_locale(text: Any, field: str = "locale") -> str:
    """The locale ``text`` names, in normal form (``fr-CA``; ``_`` is taken for ``-``).

    Raises:
        InvalidArgument: not a locale Babel has data for (``en-ZZ`` is refused, not taken as
            ``en-US``); the message names ``field``.
    """
    example = "a locale such as fr or fr-CA"
    if not isinstance(text, str) or not 0 < len(text) <= MAX_LOCALE_LENGTH:
        raise InvalidArgument(f"{field}: {example}")
    wanted = text.replace("-", "_")
    try:
        parsed = Locale.parse(wanted)
    except (UnknownLocaleError, ValueError, TypeError):
        parsed = None
    if parsed is None or str(parsed).lower() != wanted.lower():
        raise InvalidArgument(f"{field}: unknown locale {text!r} ({example})")
    return str(parsed).replace("_", "-")


def chain(wanted: str | None) -> list[str]:
    """The tags to look for, most specific first: ``zh-Hant-TW`` → ``zh-Hant-TW``,
    ``zh-Hant``, ``zh``."""
    if not wanted:
        return []
    parts = wanted.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


def pick(wanted: str | None, translations: dict[str, Any], own: str) -> tuple[str | None, str]:
    """Which translation serves a user in ``wanted`` (None: the default content) and the
    locale to format in."""
    for tag in chain(wanted):
        if tag in translations:
            return tag, wanted or tag
    return None, own


# Filters -----------------------------------------------------------------------------------


def _locale(context: Context) -> str:
    found = context.get("locale")
    return (found if isinstance(found, str) and found else DEFAULT_LOCALE).replace("-", "_")


def _moment(value: Any, tz: str | None) -> datetime:
    """A datetime from a datetime, a date, an ISO 8601 string or seconds since the epoch, in
    the zone ``tz`` (UTC by default)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), UTC)
    if not isinstance(value, datetime):
        raise ValueError(f"not a date or time: {value!r}")
    moment: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        zone = ZoneInfo(tz) if tz else UTC
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    return moment.astimezone(zone)


def _day(value: Any) -> date:
    if isinstance(value, str) and len(value) == 10:
        return date.fromisoformat(value)
    return _moment(value, None).date()


def _amount(value: Any) -> Decimal | int | float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int | float):
        return value
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


@pass_context
def format_date(context: Context, value: Any, format: str = "medium") -> str:
    """``{{ order.placed | date }}`` → ``6 déc. 2026`` in ``fr``; formats ``short``,
    ``medium``, ``long``, ``full`` or a CLDR pattern."""
    return babel_dates.format_date(_day(value), format, locale=_locale(context))


@pass_context
def format_datetime(
    context: Context, value: Any, format: str = "medium", tz: str | None = None
) -> str:
    """``{{ at | datetime("short", tz="Europe/Paris") }}``: a time with its date, in ``tz``
    (an IANA zone; UTC by default)."""
    return babel_dates.format_datetime(_moment(value, tz), format, locale=_locale(context))


@pass_context
def format_time(context: Context, value: Any, format: str = "short", tz: str | None = None) -> str:
    """``{{ at | time(tz="America/New_York") }}``: the time of day in ``tz``."""
    return babel_dates.format_time(_moment(value, tz), format, locale=_locale(context))


@pass_context
def format_number(context: Context, value: Any, format: str | None = None) -> str:
    """``{{ 1234.5 | number }}`` → ``1 234,5`` in ``fr``."""
    return babel_numbers.format_decimal(_amount(value), format, locale=_locale(context))


@pass_context
def format_currency(context: Context, value: Any, currency: str) -> str:
    """``{{ total | currency("EUR") }}`` → ``12,50 €`` in ``fr``, ``€12.50`` in ``en``."""
    return babel_numbers.format_currency(_amount(value), currency, locale=_locale(context))


@pass_context
def format_percent(context: Context, value: Any, format: str | None = None) -> str:
    """``{{ 0.25 | percent }}`` → ``25 %`` in ``fr``."""
    return babel_numbers.format_percent(_amount(value), format, locale=_locale(context))


#: the filters every template has, by name
FILTERS: dict[str, Callable[..., str]] = {
    "date": format_date,
    "datetime": format_datetime,
    "time": format_time,
    "number": format_number,
    "currency": format_currency,
    "percent": format_percent,
}
