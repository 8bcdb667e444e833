"""The pipeline store contract of locales: a template's own locale and its translations
(written, replaced, listed, removed alone or with the template, each change a new version), a
user's locale (set, shown in the preferences, carried by claims, erased with the user). Every
backend passes it (the ``pstore`` fixture)."""

from __future__ import annotations

from contract.pipeline_store.backends import (
    LONG,
    create,
    new_message,
    postgres_template,
    pstore,
)
from tidings.delivery.models import Content
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures

ENGLISH = Content(text="Your order shipped on {{ day | date }}", subject="Shipped")
FRENCH = Content(text="Votre commande est partie le {{ day | date }}", subject="Expédiée")


async def test_translations_live_and_die_with_their_template(pstore: PipelineStore) -> None:
    template, created = await pstore.put_template("shipped", ENGLISH, "en-GB")
    assert created and (template.locale, template.translations) == ("en-GB", {})
    translated = await pstore.put_translation("shipped", "fr", FRENCH)
    assert translated is not None and translated.version == 2
    assert translated.translations == {"fr": FRENCH}
    again = await pstore.put_translation("shipped", "fr", Content(text="Partie"))
    assert again is not None and again.version == 3
    await pstore.put_translation("shipped", "fr-CA", FRENCH)
    replaced, created = await pstore.put_template("shipped", ENGLISH)  # the default changes
    assert not created and replaced.locale == "en"
    assert replaced.translations == {"fr": Content(text="Partie"), "fr-CA": FRENCH}
    [listed] = await pstore.list_templates()
    assert set(listed.translations) == {"fr", "fr-CA"}
    assert await pstore.delete_translation("shipped", "fr-CA") is True
    assert await pstore.delete_translation("shipped", "fr-CA") is False
    got = await pstore.get_template("shipped")
    assert got is not None and set(got.translations) == {"fr"} and got.version == 6
    assert await pstore.put_translation("nothing", "fr", FRENCH) is None
    assert await pstore.delete_template("shipped") is True
    await pstore.put_template("shipped", ENGLISH)  # a new template has none of the old ones
    fresh = await pstore.get_template("shipped")
    assert fresh is not None and fresh.translations == {} and fresh.version == 1


async def test_a_users_locale_is_shown_claimed_and_erased(pstore: PipelineStore) -> None:
    assert (await pstore.preferences("alice")).locale is None
    await pstore.set_locale("alice", "fr-CA")
    await pstore.set_locale("bob", "de")
    assert (await pstore.preferences("alice")).to_dict()["locale"] == "fr-CA"
    await create(pstore, new_message(("alice", "bob", "carol")))
    claims = await pstore.claim(["in_app"], "w", 10, LONG)
    assert {c.user_id: c.locale for c in claims} == {"alice": "fr-CA", "bob": "de", "carol": None}
    await pstore.set_locale("bob", None)
    assert (await pstore.preferences("bob")).locale is None
    erased = await pstore.erase_user("alice")
    assert erased["preferences"] >= 1
    assert (await pstore.preferences("alice")).locale is None
