"""The hot value types (``msgspec`` structs) behave as the frozen dataclasses they were: same
fields in the same order, defaults, errors, equality, hashing and frozen instances."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from tidings.core import models
from tidings.core.models import (
    Notification,
    NotifyResult,
    UnseenCount,
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


def fields_of(cls: type[Any]) -> tuple[str, ...]:
    """The field names of a value type, in order."""
    return cls.__struct_fields__  # type: ignore[no-any-return]


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_instances_hold_what_was_given_and_stay_frozen(cls: type[Any]) -> None:
    """Built by position or name alike; frozen, picklable, arity checked."""
    names = fields_of(cls)
    values = [f"value-{i}" for i in range(len(names))]
    positional = cls(*values)
    by_name = cls(**dict(zip(names, values, strict=True)))
    assert positional == by_name
    assert hash(positional) == hash(by_name)
    assert [getattr(positional, n) for n in names] == values
    with pytest.raises(AttributeError):
        setattr(positional, names[0], "changed")
    assert pickle.loads(pickle.dumps(positional)) == positional
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        cls(*values, "one too many")


def test_defaults_apply() -> None:
    """Fields left out take their defaults."""
    now = utcnow()
    note = Notification("n1", "u1", {"a": 1}, now)
    assert (note.seen_date, note.seq) == (None, 0)
    result = NotifyResult(note, created=True)
    assert result.count is None
    assert NotifyResult(note, True, UnseenCount("u1", 1, 1)).count == UnseenCount("u1", 1, 1)


def test_replace_and_fields_order() -> None:
    """``msgspec.structs.replace`` changes one field; the order of fields is the old one, the
    inbox's fields after it."""
    note = Notification("n1", "u1", {"a": 1}, utcnow())
    assert msgspec.structs.replace(note, seq=7).seq == 7
    assert fields_of(Notification) == (
        "notification_id",
        "user_id",
        "data",
        "creation_date",
        "seen_date",
        "seq",
        "category",
        "read_date",
        "archived_date",
    )
    assert note != Notification("n1", "u1", {"a": 1}, note.creation_date, seq=1)


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
