"""Helpers shared by the storage backends."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from importlib import resources
from typing import Any

import orjson

from tidings.core.ids import new_sorted_ids
from tidings.core.models import ORJSON_LEVELS, unreadable_data

logger = logging.getLogger("tidings")


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys: equal values give equal bytes (for idempotency checks)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of the packaged migrations of ``dialect``, in order."""
    folder = resources.files("tidings.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name[:-4], entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_sql(script: str) -> list[str]:
    """Statements of a migration file (they hold no ';' or '--' inside literals)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def with_counts(outcomes: list[Any], final: dict[str, Any]) -> list[Any]:
    """Results of a batch: each created notification (a ``Notification`` among ``outcomes``)
    gets the counts its user had right after it, as if the batch had been written one by one
    (``final``: each user's ``UnseenCount`` after the batch)."""
    from tidings.core.models import Notification, NotifyResult
    from tidings.storage.counts import earlier

    results: list[Any] = []
    after = dict(final)
    for outcome in reversed(outcomes):  # from the last, stepping each user's counts back
        if not isinstance(outcome, Notification):
            results.append(outcome)
            continue
        count = after[outcome.user_id]
        results.append(NotifyResult(outcome, created=True, count=count))
        after[outcome.user_id] = earlier(count, outcome.category)
    results.reverse()
    return results


def repeated(prior: Any, user_id: str, data: Any) -> Any:
    """What sending a known ``notification_id`` again gets: the first notification
    (``NotifyResult`` with ``created=False``) if it is the same user and data, else a
    ``Conflict``."""
    from tidings.core.models import NotifyResult
    from tidings.errors import Conflict

    if prior.user_id != user_id or canonical_json(prior.data) != canonical_json(data):
        return Conflict(f"notification_id {prior.notification_id!r} is taken by another")
    return NotifyResult(prior, created=False)


#: a batch item ready to write: (user_id, data, data as JSON text, notification_id, category)
Prepared = tuple[str, Any, str, str, str | None]


def prepare(items: Iterable[Any]) -> list[Prepared]:
    """A batch's items as ``(user_id, data, data as JSON text, notification_id, category)``,
    with an id generated where the caller gave none."""
    items = list(items)
    fresh = iter(new_sorted_ids(sum(1 for item in items if not item.notification_id)))
    return [
        (
            item.user_id,
            item.data,
            orjson.dumps(item.data).decode(),
            item.notification_id or next(fresh),
            item.category,
        )
        for item in items
    ]


def load_data(text: str | bytes, what: str) -> Any:
    """Stored JSON back to a value; the :func:`~tidings.core.models.unreadable_data` marker
    (logged) for text that is not JSON orjson reads (not UTF-8, a lone surrogate, nested past
    1024 levels: written by other means than tidings), so one such row fails no read."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        logger.warning("%s: stored data is unreadable (%s); read as %r", what, exc, "marker")
        return unreadable_data(f"the stored data is not readable JSON: {exc}")


#: brackets past which stored data may be too deep for an answer to carry: orjson writes
#: ``ORJSON_LEVELS`` (254) levels, answers put data at most ``ANSWER_LEVELS`` down
ANSWER_LEVELS = 8
_ANSWER_DEPTH = ORJSON_LEVELS - ANSWER_LEVELS


def answerable(data: Any, text: str | bytes, what: str) -> Any:
    """``data`` read from ``text``, or the marker (logged) if no answer could carry it: data
    stored before the node refused such nesting. For readers whose rows are answered many at
    once (the log, topic replays); frames check each notification as they write it. Costs
    two counts of brackets; only data with more of them is encoded once to see."""
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    if brackets <= _ANSWER_DEPTH:
        return data
    wrapped = data
    for _ in range(ANSWER_LEVELS):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as exc:
        logger.warning("%s: stored data cannot be answered (%s); read as %r", what, exc, "marker")
        return unreadable_data(f"the stored data cannot be written in an answer: {exc}")
    return data


#: the columns a state change sets where still NULL, in order (``None``: cleared where set); the
#: rows the last one changes are the ones the change marked, and those ``seen_date`` changes
#: are counted down from the unseen count
STATE_CHANGES: dict[str, tuple[tuple[str, bool], ...]] = {
    "read": (("seen_date", True), ("read_date", True)),
    "archive": (("seen_date", True), ("read_date", True), ("archived_date", True)),
    "unarchive": (("archived_date", False),),
}


def state_update(column: str, setting: bool, placeholder: str) -> str:
    """The ``SET … WHERE`` part of one column of a state change (``placeholder``: the time)."""
    if setting:
        return f"SET {column} = {placeholder} WHERE {column} IS NULL"
    return f"SET {column} = NULL WHERE {column} IS NOT NULL"


#: each history state's condition on a notification's row (the same in both dialects)
HISTORY_WHERE = {
    "all": "archived_date IS NULL",
    "unseen": "seen_date IS NULL AND archived_date IS NULL",
    "unread": "read_date IS NULL AND archived_date IS NULL",
    "archived": "archived_date IS NOT NULL",
}


def scope_where(scope: Any, placeholder: str, dialect: str) -> tuple[str, list[Any]]:
    """The condition of a :class:`~tidings.core.models.RetentionScope` on a notification's
    row, with at most one parameter (a list, at ``placeholder``)."""
    listed = scope.categories if scope.categories is not None else scope.excluded
    if scope.categories is None and not listed:
        return "TRUE", []
    if dialect == "postgres":
        inside = f"category = ANY({placeholder}::text[])"
        value: Any = list(listed)
    else:
        inside = f"category IN (SELECT value FROM json_each({placeholder}))"
        value = orjson.dumps(list(listed)).decode()
    if scope.categories is not None:
        return inside, [value]
    return f"(category IS NULL OR NOT {inside})", [value]


#: what a removal returns of each notification: enough to lower its user's counts
REMOVED_COLUMNS = "user_id, category, seen_date IS NULL, read_date IS NULL, seq"


def bisect_log(top: int) -> Generator[int, tuple[int, bool] | None, int]:
    """The search for the highest log position older than a mark, as a generator the caller
    drives with its own queries: it yields a position to probe and is sent back
    ``(position, older)`` of the first notification at that position or after (None past the
    end); it returns the answer (0: none). ``top`` is the highest position there is."""
    low, high = 0, top + 1  # every position up to low is older; none from high on is
    while high - low > 1:
        middle = (low + high) // 2
        found = yield middle
        if found is None or found[0] >= high or not found[1]:
            high = middle
        else:
            low = found[0]
    return low
