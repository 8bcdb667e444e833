"""What an email or SMS provider reports after it took a message (delivered, bounced,
complained about), recorded on PostgreSQL: :class:`PostgresProviderEvents` is the
:meth:`~tidings.delivery.stores.base.MessageStore.record_provider_event` of the pipeline's
store."""

from __future__ import annotations

from tidings.core.models import utcnow
from tidings.delivery.models import FAILED, SENT
from tidings.delivery.stores.postgres.common import PostgresTables, write_history
from tidings.delivery.stores.rows import HistoryRow
from tidings.storage.postgres import PostgresStore


class PostgresProviderEvents(PostgresTables):
    async def record_provider_event(
        self, channel: str, provider_id: str, reason: str, detail: str, *, fail: bool
    ) -> list[tuple[str, str, bool]]:
        return await record(self.store, channel, provider_id, reason, detail, fail)


async def record(
    store: PostgresStore, channel: str, provider_id: str, reason: str, detail: str, fail: bool
) -> list[tuple[str, str, bool]]:
    """The event on every delivery of ``channel`` the provider knows as ``provider_id``: a
    history entry, and a ``sent`` delivery ends ``failed`` when the event ``fail`` s; an event
    already recorded (the provider sent it again) changes nothing. The deliveries are locked
    while it is decided, so two copies of one event arriving at once record it once.
    (delivery id, user id, whether it was recorded now) per delivery found."""
    at = utcnow()
    async with store.connection(transaction=True) as conn:
        found = await conn.fetch(
            "SELECT delivery_id, user_id, state FROM pipeline_deliveries "
            "WHERE provider_id = $1 AND channel = $2 ORDER BY delivery_id FOR UPDATE",
            provider_id,
            channel,
        )
        entries: list[HistoryRow] = []
        recorded: list[tuple[str, str, bool]] = []
        for delivery_id, user_id, state in found:
            seen = await conn.fetchval(
                "SELECT 1 FROM pipeline_history WHERE delivery_id = $1 AND reason = $2 "
                "AND detail IS NOT DISTINCT FROM $3",
                delivery_id,
                reason,
                detail,
            )
            recorded.append((delivery_id, user_id, seen is None))
            if seen is not None:
                continue
            if fail and state == SENT:
                await conn.execute(
                    "UPDATE pipeline_deliveries SET state = $1, reason = $2, last_error = $3, "
                    "updated_at = $4 WHERE delivery_id = $5",
                    FAILED,
                    reason,
                    detail,
                    at,
                    delivery_id,
                )
                state = FAILED
            entries.append((delivery_id, state, reason, detail))
        await write_history(conn, entries, at)
    return recorded
