"""The pipeline store contract of the templates facet: templates written, versioned, listed and
deleted. Every backend passes it (the ``pstore`` fixture of
:mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

from contract.pipeline_store.backends import postgres_template, pstore
from tidings.delivery.models import Content
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_template_lifecycle(pstore: PipelineStore) -> None:
    """put creates version 1, put again replaces as version 2; get, list and delete follow."""
    first = Content(text="hi {{ name }}", subject="s1", html="<p>{{ name }}</p>")
    second = Content(text="hello {{ name }}")
    template, created = await pstore.put_template("greet", first)
    assert created and template.version == 1
    assert template.template_id == "greet" and template.content == first
    replaced, created = await pstore.put_template("greet", second)
    assert not created and replaced.version == 2
    assert replaced.created_at == template.created_at
    assert replaced.updated_at >= template.updated_at
    got = await pstore.get_template("greet")
    assert got is not None
    assert (got.content, got.version) == (second, 2)
    await pstore.put_template("other", first)
    listed = {t.template_id: t for t in await pstore.list_templates()}
    assert set(listed) == {"greet", "other"}
    assert listed["greet"].version == 2 and listed["other"].content == first
    assert await pstore.delete_template("greet") is True
    assert await pstore.get_template("greet") is None
    assert await pstore.delete_template("greet") is False
    assert [t.template_id for t in await pstore.list_templates()] == ["other"]
    assert await pstore.get_template("never") is None
