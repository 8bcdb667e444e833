"""A user's counts and how they are versioned, in one place.

Each user has one ``user_counts`` row: ``unseen``, ``unread``, ``categories`` (the unseen count
of each category, a JSON object without zero entries, NULL when empty) and ``version``, which
rises by one per change of any of them. A created notification is one change (a batch of ``n``
for a user raises its version by ``n``, as if they had come one by one); marking, reading or
archiving notifications is one change, however many were touched. Every statement that changes
the row returns all of it, so a change and the counts it publishes come from one statement in
one transaction, and no node ever recounts. Both backends build their statements here, so the
rule is written once for every dialect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import orjson

from tidings.core.models import UnseenCount

Dialect = Literal["sqlite", "postgres"]

#: what every statement of this module returns, in this order (after ``user_id`` for batches)
COUNT_COLUMNS = "unseen, unread, version, categories"


def _merged(dialect: Dialect, current: str, delta: str) -> str:
    """An expression adding the category counts of JSON object ``delta`` to ``current``,
    leaving out categories that fall to zero (NULL when none is left)."""
    if dialect == "postgres":
        return (
            f"(SELECT jsonb_object_agg(key, t) FROM (SELECT key, sum(value::int) AS t FROM "
            f"(SELECT key, value FROM jsonb_each_text(coalesce({current}, '{{}}'::jsonb)) "
            f"UNION ALL SELECT key, value FROM jsonb_each_text({delta})) AS e GROUP BY key) AS s "
            f"WHERE t > 0)"
        )
    return (
        f"(SELECT nullif(json_group_object(key, t), '{{}}') FROM (SELECT key, sum(value) AS t "
        f"FROM (SELECT key, value FROM json_each(coalesce({current}, '{{}}')) UNION ALL "
        f"SELECT key, value FROM json_each({delta})) GROUP BY key) WHERE t > 0)"
    )


def add_unseen_sql(dialect: Dialect, rows: str) -> str:
    """An upsert adding ``n`` unseen (and unread) notifications per user, ``n`` to the version
    and each category's share to its count.

    ``rows`` yields ``(user_id, n, n, n, categories)`` in the dialect (a ``VALUES`` or
    ``SELECT``; ``categories`` a JSON object of the batch's categories, NULL when none); the
    statement returns ``user_id`` and :data:`COUNT_COLUMNS` after the change.
    """
    table, q = ("user_counts AS c", "c.") if dialect == "postgres" else ("user_counts", "")
    current = "c.categories" if dialect == "postgres" else "user_counts.categories"
    return (
        f"INSERT INTO {table} (user_id, unseen, unread, version, categories) {rows} "
        f"ON CONFLICT (user_id) DO UPDATE SET unseen = {q}unseen + excluded.unseen, "
        f"unread = {q}unread + excluded.unread, version = {q}version + excluded.version, "
        f"categories = CASE WHEN excluded.categories IS NULL THEN {q}categories "
        f"ELSE {_merged(dialect, current, 'excluded.categories')} END "
        f"RETURNING user_id, {COUNT_COLUMNS}"
    )


def lower_counts_sql(dialect: Dialect) -> str:
    """An update taking notifications out of a user's unseen and unread counts (and their
    categories') as one change: the version rises by one.

    Parameters: ``(unseen, unread, categories, user_id)`` on SQLite, ``($1 user_id,
    $2 unseen, $3 unread, $4 categories)`` on PostgreSQL, where ``categories`` is
    :func:`lowered`'s JSON (or NULL); returns :data:`COUNT_COLUMNS` after the change.
    """
    if dialect == "postgres":
        user, unseen, unread, delta = "$1", "$2", "$3", "$4::jsonb"
    else:
        user, unseen, unread, delta = "?4", "?1", "?2", "?3"
    return (
        f"UPDATE user_counts SET unseen = unseen - {unseen}, unread = unread - {unread}, "
        f"version = version + 1, categories = CASE WHEN {delta} IS NULL THEN categories "
        f"ELSE {_merged(dialect, 'categories', delta)} END "
        f"WHERE user_id = {user} RETURNING {COUNT_COLUMNS}"
    )


def erase_counts_sql(dialect: Dialect) -> str:
    """Every count of a user to zero, as one change: a re-signed-in device never takes an older
    version for a newer one, and the sockets opened before the erasure are told from those
    opened after by it (a user without a row gets one, at version 1)."""
    table, q, user = (
        ("user_counts AS c", "c.", "$1") if dialect == "postgres" else ("user_counts", "", "?")
    )
    return (
        f"INSERT INTO {table} (user_id, unseen, unread, version) VALUES ({user}, 0, 0, 1) "
        "ON CONFLICT (user_id) DO UPDATE SET unseen = 0, unread = 0, categories = NULL, "
        f"version = {q}version + 1"
    )


def categories_json(categories: Iterable[str | None], sign: int = 1) -> str | None:
    """The JSON object counting ``categories`` (``sign``: +1 added, -1 taken away), or None
    when none of them is a category."""
    counted = Counter(c for c in categories if c is not None)
    return orjson.dumps({c: sign * n for c, n in counted.items()}).decode() if counted else None


def lowered(categories: Iterable[str | None]) -> str | None:
    """The JSON that takes the seen notifications of ``categories`` out of their counts."""
    return categories_json(categories, -1)


def counted(user_id: str, row: Any) -> UnseenCount:
    """The count from ``(unseen, unread, version, categories)`` as read from the store (a
    missing row: nothing yet)."""
    if row is None:
        return UnseenCount(user_id, 0, 0)
    unseen, unread, version, categories = row
    # JSON text, or already a dict where the connection decodes JSONB itself (an
    # application's own connection, written on by transactional notify, may)
    found = categories if isinstance(categories, dict) else orjson.loads(categories or "null")
    return UnseenCount(user_id, unseen, version, unread, found or None)


def earlier(count: UnseenCount, category: str | None) -> UnseenCount:
    """The counts just before ``count``'s latest notification (of ``category``) was created."""
    categories = count.categories
    if category is not None and categories:
        categories = dict(categories)
        if categories.get(category, 0) <= 1:
            categories.pop(category, None)
        else:
            categories[category] -= 1
    return UnseenCount(
        count.user_id, count.count - 1, count.version - 1, count.unread - 1, categories or None
    )


def removals(rows: Iterable[Any]) -> dict[str, tuple[int, int, str | None]]:
    """What removing notifications takes off each user's counts, from rows
    ``(user_id, category, unseen, unread, …)``: ``{user_id: (unseen, unread, categories)}``,
    users whose counts do not change left out (parameters of :func:`lower_counts_sql`)."""
    seen: dict[str, list[str | None]] = {}
    read: Counter[str] = Counter()
    for user_id, category, unseen, unread, *_ in rows:
        if unseen:
            seen.setdefault(user_id, []).append(category)
        if unread:
            read[user_id] += 1
    return {
        user: (len(seen.get(user, ())), read[user], lowered(seen.get(user, ())))
        for user in {*seen, *read}
    }


def removed_seqs(rows: Iterable[Any]) -> dict[str, list[int]]:
    """The log positions of removed notifications by user, in order, from rows
    ``(user_id, …, seq)`` (to count what left the queues of the user's devices)."""
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(row[-1])
    return {user: sorted(seqs) for user, seqs in found.items()}
