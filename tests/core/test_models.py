"""The value types' constructors (``fast_init`` replaces dataclass's ``__init__`` of the hot ones)
behave as dataclass's own: same signature, defaults, errors and frozen instances."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tidings.core import models
from tidings.core.models import (
    Notification,
    NotifyResult,
    UnseenCount,
    fast_init,
    isoformat,
    parse_iso,
    utcnow,
)

HOT = [
    models.Notification,
    models.UnseenCount,
    models.NewNotification,
    models.NotifyResult,
    models.Presence,
    models.TopicMessage,
    models.Device,
    models.AckResult,
]


def reference(cls: type[Any]) -> type[Any]:
    """The same fields, with dataclass's own generated ``__init__``."""
    fields = [
        (f.name, f.type, field(default=f.default) if f.default is not dataclasses.MISSING else None)
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(
        cls.__name__,
        [(n, t, d) if d is not None else (n, t) for n, t, d in fields],
        frozen=True,
        slots=True,
    )


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_the_signature_is_dataclass_s(cls: type[Any]) -> None:
    assert cls.__init__ is not reference(cls).__init__
    assert str(inspect.signature(cls)) == str(inspect.signature(reference(cls)))


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_instances_hold_what_was_given_and_stay_frozen(cls: type[Any]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    values = [f"value-{i}" for i in range(len(names))]
    positional = cls(*values)
    by_name = cls(**dict(zip(names, values, strict=True)))
    assert positional == by_name
    assert [getattr(positional, n) for n in names] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(positional, names[0], "changed")
    assert pickle.loads(pickle.dumps(positional)) == positional
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        cls(*values, "one too many")


def test_defaults_apply() -> None:
    now = utcnow()
    note = Notification("n1", "u1", {"a": 1}, now)
    assert (note.seen_date, note.seq) == (None, 0)
    result = NotifyResult(note, created=True)
    assert result.count is None
    assert NotifyResult(note, True, UnseenCount("u1", 1, 1)).count == UnseenCount("u1", 1, 1)


def test_classes_fast_init_cannot_serve_keep_dataclass_s_init() -> None:
    @dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[int] = field(default_factory=list)

    original = WithFactory.__init__
    assert fast_init(WithFactory).__init__ is original
    assert WithFactory().items == []


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 12, 2, 17, 8, 36, 420151, tzinfo=UTC), "2026-12-02T17:08:36.420151Z"),
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00.000000Z"),
        (
            datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5))),
            "2026-01-01T00:30:00.000000Z",
        ),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00.000000Z"),
    ],
)
def test_isoformat_is_utc_with_microseconds_and_z(moment: datetime, text: str) -> None:
    assert isoformat(moment) == text
    assert parse_iso(text) == moment
