"""Locales: which tags are taken (as Babel's CLDR data knows them), the fallback chain through
a template's translations, and the filters that format for the locale rendered in. The
formatted strings are CLDR's own (dates and numbers as each language writes them)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidings.delivery.locales import chain, check_locale, pick
from tidings.delivery.models import Content, Template
from tidings.delivery.templates import Renderer
from tidings.errors import InvalidArgument, TemplateFailure

NOW = datetime(2026, 12, 6, 17, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "normal"),
    [("fr", "fr"), ("FR-ca", "fr-CA"), ("en_US", "en-US"), ("zh-Hant-TW", "zh-Hant-TW")],
)
def test_locales_are_kept_in_normal_form(given: str, normal: str) -> None:
    assert check_locale(given) == normal


@pytest.mark.parametrize("given", ["xx", "en-ZZ", "", "f" * 40, "fr CA", 42, None])
def test_unknown_locales_are_refused_naming_the_field(given: object) -> None:
    with pytest.raises(InvalidArgument, match=r"^locale: "):
        check_locale(given)


def test_the_fallback_chain() -> None:
    assert chain("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh"]
    assert chain(None) == []
    translations = {"fr": 1, "pt-BR": 2}
    assert pick("fr-CA", translations, "en") == ("fr", "fr-CA")  # fr text, fr-CA formats
    assert pick("pt-BR", translations, "en") == ("pt-BR", "pt-BR")
    assert pick("pt-PT", translations, "en") == (None, "en")  # no pt: the template's own
    assert pick(None, translations, "en-GB") == (None, "en-GB")


class Templates:
    def __init__(self, *templates: Template) -> None:
        self.templates = {t.template_id: t for t in templates}

    async def fetch(self, template_id: str) -> Template | None:
        return self.templates.get(template_id)


SHIPPED = Template(
    "shipped",
    Content(
        text="Order {{ n | number }} of {{ total | currency('EUR') }} left on "
        "{{ day | date('long') }}",
        subject="Shipped at {{ at | time(tz='Europe/Paris') }}",
    ),
    1,
    NOW,
    NOW,
    "en",
    {
        "fr": Content(
            text="Commande {{ n | number }} de {{ total | currency('EUR') }} partie le "
            "{{ day | date('long') }}",
            subject="Expédiée à {{ at | time(tz='Europe/Paris') }}",
        ),
        "de": Content(text="Bestellung {{ n | number }} ({{ share | percent }})"),
    },
)
DATA = {"n": 12345.5, "total": "12.50", "day": "2026-12-06", "at": NOW.isoformat(), "share": 0.25}


async def render(locale: str | None) -> tuple[str | None, str]:
    rendered = await Renderer(Templates(SHIPPED).fetch).render(
        "shipped", None, DATA, user_id="u", channel="email", locale=locale
    )
    return rendered.subject, rendered.text


async def test_each_user_gets_their_translation_formatted_for_their_locale() -> None:
    assert await render(None) == (
        "Shipped at 6:30\u202fPM",
        "Order 12,345.5 of €12.50 left on December 6, 2026",
    )
    assert await render("fr-CA") == (
        "Expédiée à 18 h 30",
        "Commande 12\xa0345,5 de 12,50\xa0€ partie le 6 décembre 2026",
    )
    assert (await render("de-AT"))[1] == "Bestellung 12.345,5 (25\xa0%)"
    # No Japanese translation: the English text, formatted as English.
    assert await render("ja") == await render(None)


async def test_inline_content_is_formatted_for_the_users_locale() -> None:
    rendered = await Renderer(Templates().fetch).render(
        None,
        Content(text="{{ day | date('full') }} · {{ locale }}"),
        {"day": "2026-12-06"},
        user_id="u",
        channel="email",
        locale="de",
    )
    assert rendered.text == "Sonntag, 6. Dezember 2026 · de"


@pytest.mark.parametrize(
    "text",
    [
        "{{ 'soon' | date }}",
        "{{ 'lots' | number }}",
        "{{ day | datetime(tz='Mars/Olympus') }}",
        "{{ true | number }}",
    ],
)
async def test_values_a_filter_cannot_read_fail_the_render(text: str) -> None:
    with pytest.raises(TemplateFailure, match="does not render"):
        await Renderer(Templates().fetch).render(
            None, Content(text=text), {"day": "2026-12-06"}, user_id="u", channel="email"
        )
