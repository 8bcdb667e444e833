"""Template caches across nodes: a change on one node drops the cached template on every node,
long before the cache's own expiry."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from tidings import Tidings
from tidings.delivery.models import Content


async def test_a_template_change_reaches_every_node(tmp_path: Path) -> None:
    """Node B renders the new version right after node A changes the template (the bus event
    drops B's cached copy; its 60 s expiry is not what makes it right)."""
    store = f"sqlite:///{tmp_path}/shared.db"
    bus = f"memory://templates-{uuid.uuid4().hex}"
    async with (
        Tidings(store=store, bus=bus, node_id="a", workers=0) as a,
        Tidings(store=store, bus=bus, node_id="b", workers=0) as b,
    ):
        await a.pipeline.put_template("welcome", Content("Hello {{ name }}"))
        first = await b.pipeline.renderer.render(
            "welcome", None, {"name": "Ann"}, user_id="u", channel="email"
        )
        assert first.text == "Hello Ann"
        assert "welcome" in b.pipeline.renderer._stored  # cached on B

        await a.pipeline.put_template("welcome", Content("Welcome back, {{ name }}"))
        for _ in range(100):
            if "welcome" not in b.pipeline.renderer._stored:
                break
            await asyncio.sleep(0.01)
        second = await b.pipeline.renderer.render(
            "welcome", None, {"name": "Ann"}, user_id="u", channel="email"
        )
        assert second.text == "Welcome back, Ann"

        assert await a.pipeline.delete_template("welcome")
        for _ in range(100):
            if "welcome" not in b.pipeline.renderer._stored:
                break
            await asyncio.sleep(0.01)
        assert await b.pipeline.renderer.load("welcome") is None


async def test_templates_are_rendered_in_the_sandbox(tmp_path: Path) -> None:
    """A stored template cannot reach Python internals, and html is escaped while text is not."""
    async with Tidings(store=f"sqlite:///{tmp_path}/t.db", workers=0) as node:
        await node.pipeline.put_template(
            "card", Content("Hi {{ name }}", subject="For {{ name }}", html="<p>{{ name }}</p>")
        )
        shown = await node.pipeline.renderer.render(
            "card", None, {"name": "<b>Ann</b>"}, user_id="u", channel="email"
        )
        assert shown.text == "Hi <b>Ann</b>"
        assert shown.html == "<p>&lt;b&gt;Ann&lt;/b&gt;</p>"
        assert shown.subject == "For <b>Ann</b>"
        from tidings.errors import TemplateFailure

        try:
            await node.pipeline.put_template("evil", Content("{{ ''.__class__.__mro__ }}"))
            await node.pipeline.renderer.render("evil", None, {}, user_id="u", channel="email")
        except TemplateFailure as exc:
            assert "unsafe" in str(exc) and "mro" not in str(exc).replace("__mro__", "")
        else:
            raise AssertionError("the sandbox let a template read __class__")
