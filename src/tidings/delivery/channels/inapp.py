"""The in-app channel: a tidings notification, pushed to the user's devices like any other."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from tidings.delivery.channels.base import (
    Channel,
    Outgoing,
    PermanentFailure,
    TransientFailure,
)
from tidings.errors import Conflict, InvalidArgument, StoreUnavailable

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost


class InAppChannel(Channel):
    """Creates the notification ``pipeline-<delivery_id>``: a delivery sent again after its
    worker died finds it there instead of making a second one."""

    name: ClassVar[str] = "in_app"
    needs_address: ClassVar[bool] = False

    def __init__(self, host: PipelineHost) -> None:
        self.host = host

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> InAppChannel:
        """Always there: it needs nothing but the node it notifies through."""
        return cls(host)

    async def send(self, outgoing: Outgoing) -> str | None:
        notification_id = f"pipeline-{outgoing.delivery_id}"
        rendered = outgoing.rendered
        data = {
            "message_id": outgoing.message_id,
            "subject": rendered.subject,
            "text": rendered.text,
            "html": rendered.html,
            "data": rendered.data,
        }
        try:
            await self.host.notify(outgoing.user_id, data, notification_id=notification_id)
        except Conflict:
            # Written by an earlier try (the template changed since): it is there already.
            return notification_id
        except StoreUnavailable as exc:
            raise TransientFailure("unreachable", str(exc)) from exc
        except InvalidArgument as exc:  # over the size limit, or a value the store refuses
            raise PermanentFailure("rejected", str(exc)) from exc
        return notification_id
