"""The pipeline's pure helpers: planning deliveries, rate-limit parsing, message states,
template rendering in the sandbox, retry backoff and body hashing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tidings.delivery.channels.base import CHANNEL_NAMES
from tidings.delivery.models import (
    ACTIVE,
    DELETED,
    FAILED,
    PENDING,
    SENT,
    STALE,
    Content,
    NewMessage,
    PlannedDelivery,
    Template,
    message_state,
)
from tidings.delivery.pipeline import body_hash, retry_delay
from tidings.delivery.planner import (
    RateLimit,
    Recipient,
    counted_channels,
    parse_rate_limits,
    plan,
)
from tidings.delivery.templates import MAX_RENDERED, Renderer
from tidings.errors import ConfigurationError, InvalidAddress, InvalidArgument, TemplateFailure

# plan()

AVAILABLE = {"in_app": True, "email": True, "webhook": True, "web_push": True, "sms": False}
NEEDS_ADDRESS = {"in_app": False, "email": True, "webhook": True, "web_push": True, "sms": True}


def validate(channel: str, raw: Any) -> Any:
    """A trivial validator: an email address needs an @ and is lower-cased."""
    if channel == "email":
        if "@" not in str(raw):
            raise InvalidAddress(f"{raw!r} is not an email address")
        return str(raw).lower()
    return raw


def message(channels: tuple[str, ...], *, critical: bool = False) -> NewMessage:
    return NewMessage(
        client_id="svc",
        channels=channels,
        user_ids=("alice",),
        topic=None,
        template_id=None,
        content=Content(text="hi"),
        data=None,
        critical=critical,
        idempotency_key=None,
        body_hash="h",
    )


def recipient(
    user_id: str = "alice",
    *,
    switches: dict[str, bool] | None = None,
    contacts: dict[str, Any] | None = None,
    recent: dict[str, int] | None = None,
) -> Recipient:
    return Recipient(user_id, switches or {}, contacts or {}, recent or {})


def plan_one(
    channel: str,
    who: Recipient,
    *,
    critical: bool = False,
    limits: dict[str, RateLimit] | None = None,
) -> PlannedDelivery:
    [planned] = plan(
        message((channel,), critical=critical),
        [who],
        limits=limits or {},
        available=AVAILABLE,
        needs_address=NEEDS_ADDRESS,
        validate=validate,
    )
    return planned


def test_plan_channel_unavailable_fails() -> None:
    """A channel with no provider is failed with channel_unavailable."""
    planned = plan_one("sms", recipient(contacts={"sms": "+15551234567"}))
    assert (planned.state, planned.reason) == (FAILED, "channel_unavailable")
    assert not planned.queued


def test_plan_channel_missing_from_available_fails() -> None:
    """A channel not named in ``available`` counts as unavailable."""
    [planned] = plan(
        message(("email",)),
        [recipient(contacts={"email": "a@x.org"})],
        limits={},
        available={},
        needs_address=NEEDS_ADDRESS,
        validate=validate,
    )
    assert (planned.state, planned.reason) == (FAILED, "channel_unavailable")


def test_plan_switched_off_is_deleted() -> None:
    """A channel the user turned off is deleted with channel_disabled."""
    who = recipient(switches={"email": False}, contacts={"email": "a@x.org"})
    planned = plan_one("email", who)
    assert (planned.state, planned.reason) == (DELETED, "channel_disabled")
    assert planned.address is None


def test_plan_switched_on_explicitly_is_queued() -> None:
    """An explicit True switch queues like a missing one."""
    who = recipient(switches={"email": True}, contacts={"email": "a@x.org"})
    assert plan_one("email", who).state == PENDING


def test_plan_without_contact_fails_no_address() -> None:
    """A channel needing an address without a contact point fails with no_address."""
    planned = plan_one("email", recipient(contacts={"webhook": "https://x.org"}))
    assert (planned.state, planned.reason) == (FAILED, "no_address")


def test_plan_invalid_address_carries_validator_words() -> None:
    """An invalid contact point fails with invalid_address and the validator's message."""
    planned = plan_one("email", recipient(contacts={"email": "not-an-address"}))
    assert (planned.state, planned.reason) == (FAILED, "invalid_address")
    assert planned.detail == "'not-an-address' is not an email address"


def test_plan_queues_with_validated_address() -> None:
    """A valid contact is queued with the address as the validator returned it."""
    planned = plan_one("email", recipient(contacts={"email": "Alice@X.org"}))
    assert (planned.state, planned.reason) == (PENDING, "queued")
    assert planned.queued
    assert planned.address == "alice@x.org"
    assert (planned.user_id, planned.channel) == ("alice", "email")


def test_plan_over_rate_limit_fails() -> None:
    """At the limit, a delivery fails with rate_limited; below it, it is queued."""
    limits = {"email": RateLimit(2, 3600)}
    contacts = {"email": "a@x.org"}
    over = plan_one("email", recipient(contacts=contacts, recent={"email": 2}), limits=limits)
    assert (over.state, over.reason) == (FAILED, "rate_limited")
    assert over.detail
    under = plan_one("email", recipient(contacts=contacts, recent={"email": 1}), limits=limits)
    assert under.state == PENDING


def test_plan_critical_bypasses_rate_limit() -> None:
    """A critical message is queued even over the limit."""
    limits = {"email": RateLimit(1, 3600)}
    who = recipient(contacts={"email": "a@x.org"}, recent={"email": 10})
    planned = plan_one("email", who, critical=True, limits=limits)
    assert (planned.state, planned.reason) == (PENDING, "queued")


def test_plan_critical_does_not_bypass_opt_out() -> None:
    """Critical bypasses only the rate limit: a switched-off channel stays deleted."""
    who = recipient(switches={"email": False}, contacts={"email": "a@x.org"})
    assert plan_one("email", who, critical=True).state == DELETED


def test_plan_in_app_needs_no_address() -> None:
    """in_app is queued without any contact point, with no address."""
    planned = plan_one("in_app", recipient())
    assert (planned.state, planned.reason, planned.address) == (PENDING, "queued", None)


def test_plan_unlimited_channel_ignores_recent() -> None:
    """A channel without a limit is queued whatever its recent count."""
    planned = plan_one(
        "email",
        recipient(contacts={"email": "a@x.org"}, recent={"email": 10_000}),
        limits={"sms": RateLimit(1, 60)},
    )
    assert planned.state == PENDING


def test_plan_order_is_recipient_then_channel() -> None:
    """plan returns one decision per (recipient, channel) in recipient then channel order."""
    users = [recipient("alice"), recipient("bob", contacts={"email": "b@x.org"})]
    planned = plan(
        message(("in_app", "email")),
        users,
        limits={},
        available=AVAILABLE,
        needs_address=NEEDS_ADDRESS,
        validate=validate,
    )
    assert [(p.user_id, p.channel, p.reason) for p in planned] == [
        ("alice", "in_app", "queued"),
        ("alice", "email", "no_address"),
        ("bob", "in_app", "queued"),
        ("bob", "email", "queued"),
    ]


def test_counted_channels_are_the_limited_ones() -> None:
    """counted_channels lists the message's channels that have a limit, in message order."""
    limits = {"sms": RateLimit(1, 60), "email": RateLimit(2, 60), "web_push": RateLimit(3, 60)}
    assert counted_channels(message(("in_app", "email", "sms")), limits) == ["email", "sms"]


# parse_rate_limits


def test_parse_rate_limits_named_and_numeric_periods() -> None:
    """Named periods and a number of seconds parse into RateLimits."""
    limits = parse_rate_limits(
        {"email": "20/hour", "sms": "5/30", "web_push": " 3 / minute ", "webhook": "1/day"},
        CHANNEL_NAMES,
    )
    assert limits["email"] == RateLimit(20, 3600.0)
    assert limits["sms"] == RateLimit(5, 30.0)
    assert limits["web_push"] == RateLimit(3, 60.0)
    assert limits["webhook"] == RateLimit(1, 86400.0)
    assert parse_rate_limits({"sms": "2/second"}, CHANNEL_NAMES)["sms"] == RateLimit(2, 1.0)
    assert parse_rate_limits({"sms": "2/1.5"}, CHANNEL_NAMES)["sms"] == RateLimit(2, 1.5)
    assert parse_rate_limits({}, CHANNEL_NAMES) == {}


def test_rate_limit_since_is_one_period_back() -> None:
    """RateLimit.since is ``period`` seconds before now."""
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert RateLimit(1, 3600).since(now) == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["", "abc", "20", "20/", "/hour", "20/fortnight", "-1/hour", "2/hour/3", "x/60", "5/0"]
)
def test_parse_rate_limits_rejects_junk(text: str) -> None:
    """A malformed limit raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        parse_rate_limits({"email": text}, CHANNEL_NAMES)


def test_parse_rate_limits_rejects_unknown_channel() -> None:
    """A limit for a channel that does not exist raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="pigeon"):
        parse_rate_limits({"pigeon": "1/hour"}, CHANNEL_NAMES)


# message_state


@pytest.mark.parametrize(
    ("counts", "state"),
    [
        ({DELETED: 3}, DELETED),
        ({SENT: 2}, SENT),
        ({SENT: 2, DELETED: 1}, SENT),
        ({SENT: 1, FAILED: 1}, FAILED),
        ({FAILED: 1, DELETED: 2}, FAILED),
        ({FAILED: 2}, FAILED),
        ({STALE: 1, PENDING: 2}, STALE),
        ({STALE: 1, ACTIVE: 1, SENT: 1}, STALE),
        ({ACTIVE: 1, PENDING: 3}, ACTIVE),
        ({SENT: 1, PENDING: 1}, ACTIVE),
        ({FAILED: 1, PENDING: 1}, ACTIVE),
        ({PENDING: 2}, PENDING),
        ({PENDING: 2, SENT: 0, ACTIVE: 0}, PENDING),
        ({SENT: 1, ACTIVE: 0, DELETED: 0}, SENT),
        ({}, SENT),
    ],
)
def test_message_state_derivation(counts: dict[str, int], state: str) -> None:
    """A message's state follows docs/pipeline.md from its deliveries' counts."""
    assert message_state(counts) == state


# Renderer


class FakeTemplates:
    """An in-memory stand-in for the store's get_template, counting fetches."""

    def __init__(self) -> None:
        self.templates: dict[str, Template] = {}
        self.fetches: list[str] = []

    def put(self, template_id: str, content: Content) -> None:
        old = self.templates.get(template_id)
        now = datetime.now(UTC)
        version = old.version + 1 if old else 1
        self.templates[template_id] = Template(template_id, content, version, now, now)

    async def fetch(self, template_id: str) -> Template | None:
        self.fetches.append(template_id)
        return self.templates.get(template_id)


@pytest.fixture
def templates() -> FakeTemplates:
    return FakeTemplates()


@pytest.fixture
def renderer(templates: FakeTemplates) -> Renderer:
    return Renderer(templates.fetch)


async def render_inline(renderer: Renderer, content: Content, data: Any = None) -> Any:
    return await renderer.render(None, content, data, user_id="alice", channel="email")


async def test_render_stored_template_parts(templates: FakeTemplates, renderer: Renderer) -> None:
    """A stored template renders subject, text and html with the data, user_id and channel."""
    templates.put(
        "shipped",
        Content(
            subject="Order {{ order }} shipped",
            text="Hi {{ user_id }}, order {{ order }} via {{ channel }}",
            html="<p>Order <b>{{ order }}</b></p>",
        ),
    )
    data = {"order": 42}
    rendered = await renderer.render("shipped", None, data, user_id="alice", channel="email")
    assert rendered.subject == "Order 42 shipped"
    assert rendered.text == "Hi alice, order 42 via email"
    assert rendered.html == "<p>Order <b>42</b></p>"
    assert rendered.data == data


async def test_render_without_subject_or_html(renderer: Renderer) -> None:
    """Parts the content lacks render as None."""
    rendered = await render_inline(renderer, Content(text="plain {{ n }}"), {"n": 1})
    assert (rendered.subject, rendered.text, rendered.html) == (None, "plain 1", None)


async def test_render_non_dict_data_as_data(renderer: Renderer) -> None:
    """Non-object data is reachable as ``data``."""
    rendered = await render_inline(renderer, Content(text="{{ data[1] }}"), ["a", "b"])
    assert rendered.text == "b"


async def test_html_autoescapes_text_does_not(renderer: Renderer) -> None:
    """html escapes ``<script>`` from the data; text and subject keep it as given."""
    content = Content(subject="{{ note }}", text="{{ note }}", html="<div>{{ note }}</div>")
    rendered = await render_inline(renderer, content, {"note": "<script>alert(1)</script>"})
    assert rendered.html == "<div>&lt;script&gt;alert(1)&lt;/script&gt;</div>"
    assert "<script>" not in rendered.html
    assert rendered.text == "<script>alert(1)</script>"
    assert rendered.subject == "<script>alert(1)</script>"


async def test_missing_variable_is_template_failure(renderer: Renderer) -> None:
    """StrictUndefined: a variable missing from the data is a TemplateFailure."""
    with pytest.raises(TemplateFailure, match="missing"):
        await render_inline(renderer, Content(text="hi {{ missing }}"), {"other": 1})


def test_template_failure_is_invalid_argument() -> None:
    """TemplateFailure is an InvalidArgument (answered 422)."""
    assert issubclass(TemplateFailure, InvalidArgument)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ data.__class__ }}",
    ],
)
async def test_sandbox_escape_is_template_failure(renderer: Renderer, source: str) -> None:
    """An attempt to reach Python internals is a TemplateFailure that leaks nothing."""
    with pytest.raises(TemplateFailure) as info:
        await render_inline(renderer, Content(text=source), {"x": 1})
    words = str(info.value)
    assert "<class" not in words
    assert "__builtins__" not in words
    assert "<module" not in words
    assert "uid=" not in words


async def test_sandbox_escape_in_html_is_template_failure(renderer: Renderer) -> None:
    """The html environment is sandboxed too."""
    content = Content(text="ok", html="{{ cycler.__init__.__globals__ }}")
    with pytest.raises(TemplateFailure) as info:
        await render_inline(renderer, content, {})
    assert "__builtins__" not in str(info.value)


async def test_sandbox_refuses_mutation(renderer: Renderer) -> None:
    """The immutable sandbox refuses calls that modify the data."""
    with pytest.raises(TemplateFailure):
        await render_inline(renderer, Content(text="{{ items.append(1) }}"), {"items": []})


def test_syntax_error_fails_at_compile(renderer: Renderer) -> None:
    """A template that does not parse is a TemplateFailure from compile."""
    with pytest.raises(TemplateFailure, match="compile"):
        renderer.compile(Content(text="{% if %}"))
    with pytest.raises(TemplateFailure):
        renderer.compile(Content(text="ok", html="{{ unclosed "))
    compiled = renderer.compile(Content(text="fine {{ x }}"), 3)
    assert compiled.version == 3


async def test_syntax_error_in_inline_content_fails_render(renderer: Renderer) -> None:
    """Rendering inline content that does not parse is a TemplateFailure."""
    with pytest.raises(TemplateFailure):
        await render_inline(renderer, Content(text="{% for %}"))


async def test_syntax_error_in_stored_template_fails_render(
    templates: FakeTemplates, renderer: Renderer
) -> None:
    """A stored template that does not parse is a TemplateFailure at render."""
    templates.put("broken", Content(text="{{ "))
    with pytest.raises(TemplateFailure):
        await renderer.render("broken", None, {}, user_id="u", channel="email")


async def test_stored_template_is_cached_until_forgotten(
    templates: FakeTemplates, renderer: Renderer
) -> None:
    """A stored template is fetched once, served from cache, and re-fetched after forget()."""
    templates.put("t", Content(text="v1 {{ n }}"))
    first = await renderer.render("t", None, {"n": 1}, user_id="u", channel="in_app")
    second = await renderer.render("t", None, {"n": 2}, user_id="u", channel="in_app")
    assert (first.text, second.text) == ("v1 1", "v1 2")
    assert templates.fetches == ["t"]
    templates.put("t", Content(text="v2 {{ n }}"))
    stale = await renderer.render("t", None, {"n": 3}, user_id="u", channel="in_app")
    assert stale.text == "v1 3"
    assert templates.fetches == ["t"]
    renderer.forget("t")
    fresh = await renderer.render("t", None, {"n": 4}, user_id="u", channel="in_app")
    assert fresh.text == "v2 4"
    assert templates.fetches == ["t", "t"]
    renderer.forget("never-loaded")  # forgetting an unknown id is harmless


async def test_unknown_template_is_template_failure(
    templates: FakeTemplates, renderer: Renderer
) -> None:
    """An unknown template id is a TemplateFailure naming it."""
    with pytest.raises(TemplateFailure, match="nope"):
        await renderer.render("nope", None, {}, user_id="u", channel="email")
    assert templates.fetches == ["nope"]


async def test_deleted_template_is_unknown_after_forget(
    templates: FakeTemplates, renderer: Renderer
) -> None:
    """A template deleted from the store is unknown once forgotten."""
    templates.put("t", Content(text="x"))
    assert (await renderer.render("t", None, {}, user_id="u", channel="email")).text == "x"
    del templates.templates["t"]
    renderer.forget("t")
    with pytest.raises(TemplateFailure):
        await renderer.render("t", None, {}, user_id="u", channel="email")


async def test_render_needs_template_or_content(renderer: Renderer) -> None:
    """Neither template_id nor content is a TemplateFailure."""
    with pytest.raises(TemplateFailure):
        await renderer.render(None, None, {}, user_id="u", channel="email")


async def test_rendered_text_is_bounded(renderer: Renderer) -> None:
    """A part rendering longer than MAX_RENDERED is a TemplateFailure."""
    content = Content(text="{{ 'x' * n }}")
    ok = await render_inline(renderer, content, {"n": 10})
    assert ok.text == "x" * 10
    with pytest.raises(TemplateFailure):
        await render_inline(renderer, content, {"n": MAX_RENDERED + 1})


# retry_delay


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12, 40])
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999, 1.0])
def test_retry_delay_within_full_jitter_bounds(attempt: int, rand: float) -> None:
    """Without a hint, the delay lies in [0, min(cap, base * 2^(attempt-1))]."""
    base, cap = 2.0, 600.0
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = retry_delay(attempt, base, cap, None, rand)
    assert 0.0 <= delay <= ceiling
    assert delay == pytest.approx(ceiling * rand)


def test_retry_delay_grows_then_caps() -> None:
    """The ceiling doubles per attempt until the cap."""
    ceilings = [retry_delay(n, 2.0, 60.0, None, 1.0) for n in range(1, 8)]
    assert ceilings == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_retry_delay_honours_retry_after_as_floor() -> None:
    """A Retry-After hint is a floor on the delay, itself capped."""
    assert retry_delay(1, 2.0, 600.0, 30.0, 0.0) == 30.0
    assert retry_delay(1, 2.0, 600.0, 30.0, 1.0) == 30.0
    # a hint below the jittered delay changes nothing
    assert retry_delay(6, 2.0, 600.0, 1.0, 1.0) == 64.0
    # a hint above the cap is capped
    assert retry_delay(1, 2.0, 600.0, 10_000.0, 0.5) == 600.0
    assert retry_delay(3, 2.0, 600.0, 0.0, 0.0) == 0.0


# body_hash


def test_body_hash_ignores_key_order() -> None:
    """Bodies that differ only in key order (at any depth) hash the same."""
    one = {"recipients": {"user_ids": ["a", "b"]}, "data": {"x": 1, "y": {"p": 1, "q": 2}}}
    two = {"data": {"y": {"q": 2, "p": 1}, "x": 1}, "recipients": {"user_ids": ["a", "b"]}}
    assert body_hash(one) == body_hash(two)
    assert len(body_hash(one)) == 64
    int(body_hash(one), 16)


def test_body_hash_differs_for_other_bodies() -> None:
    """Another value, or another list order, hashes differently."""
    base = {"recipients": {"user_ids": ["a", "b"]}, "data": {"x": 1}}
    assert body_hash(base) != body_hash({"recipients": {"user_ids": ["b", "a"]}, "data": {"x": 1}})
    assert body_hash(base) != body_hash({"recipients": {"user_ids": ["a", "b"]}, "data": {"x": 2}})
    assert body_hash(base) == body_hash(dict(base))
