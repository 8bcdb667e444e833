"""Retention of the inbox's history: notifications past an age, or past a number kept per user,
are removed, with their users' counts lowered in the same transaction and published.

Every node sweeps (from the cluster's periodic sweep); removing what another node removed is
harmless. Age rules walk the log oldest first from where they stopped; count rules look at the
users notified since the last sweep (a history grows past its limit only when something is
added to it), so a limit set on a store with long histories takes effect for each user at their
next notification.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tidings.core.models import Removed, RetentionScope, UnseenCount, utcnow
from tidings.services.stores import RetentionStore

logger = logging.getLogger("tidings")

#: notifications removed per transaction
BATCH = 1000
#: transactions (or pages of notified users) per rule and sweep, so one sweep stays short
STEPS = 20


@dataclass(frozen=True, slots=True)
class Rule:
    """Keep at most ``max`` notifications per user and none older than ``max_age`` seconds,
    of the notifications in ``scope``."""

    scope: RetentionScope
    max: int | None = None
    max_age: float | None = None


def rules_from(max: int | None, max_age: float | None, categories: Mapping[str, Any]) -> list[Rule]:
    """The rules of the settings: the general one for every category not listed (and for
    notifications without one), and each listed category's own."""
    listed = tuple(sorted(categories))
    rules = [Rule(RetentionScope(None, listed), max, max_age)] if max or max_age else []
    for name in listed:
        own = categories[name]
        if own.max or own.max_age:
            rules.append(Rule(RetentionScope((name,)), own.max, own.max_age))
    return rules


class Retention:
    """Applies the retention rules, one sweep at a time."""

    def __init__(
        self,
        store: RetentionStore,
        publish: Callable[[UnseenCount], Awaitable[None]],
        rules: list[Rule],
    ) -> None:
        self.store = store
        self.publish = publish
        self.rules = rules
        #: per age rule, the log position up to which its expired notifications are gone
        self._aged: dict[int, int] = {}
        #: the log position up to which notified users' histories were trimmed
        self._trimmed: int | None = None
        #: users with more to remove than one transaction took
        self._unfinished: set[str] = set()

    async def sweep(self) -> int:
        """Remove what the rules say must go; how many notifications went."""
        removed = 0
        for index, rule in enumerate(self.rules):
            if rule.max_age:
                removed += await self._expire(index, rule.scope, rule.max_age)
        if any(rule.max for rule in self.rules):
            removed += await self._trim()
        if removed:
            logger.info("retention removed %d notifications", removed)
        return removed

    async def _expire(self, index: int, scope: RetentionScope, max_age: float) -> int:
        upto = await self.store.log_position_before(utcnow() - timedelta(seconds=max_age))
        after, removed = self._aged.get(index, 0), 0
        for _ in range(STEPS):
            if after >= upto:
                break
            done = await self.store.remove_in_range(scope, after, upto, BATCH)
            removed += await self._published(done)
            after = done.last if done.removed == BATCH else upto
        self._aged[index] = after
        return removed

    async def _trim(self) -> int:
        if self._trimmed is None:  # this node's first sweep: from now on
            self._trimmed = await self.store.log_position_before(utcnow() + timedelta(days=1))
        # Each user once per sweep: those notified since the last one, and those left over.
        users = set(self._unfinished)
        for _ in range(STEPS):
            notified, self._trimmed = await self.store.users_notified_after(self._trimmed, BATCH)
            users.update(notified)
            if not notified:
                break
        removed = 0
        for user_id in users:
            removed += await self._trim_user(user_id)
        return removed

    async def _trim_user(self, user_id: str) -> int:
        self._unfinished.discard(user_id)
        removed = 0
        for rule in self.rules:
            if rule.max:
                done = await self.store.remove_beyond(user_id, rule.scope, rule.max, BATCH)
                removed += await self._published(done)
                if done.removed == BATCH:
                    self._unfinished.add(user_id)
        return removed

    async def _published(self, done: Removed) -> int:
        for count in done.counts:
            await self.publish(count)
        return done.removed
