"""The admin console (``GET /admin``) and the JSON it reads, all with scope ``admin``:

- ``GET /admin/overview``: nodes, open sockets, recent notifications, pipeline queues;
- ``GET /admin/stats``: this node's own metrics (those of ``GET /metrics``), for live charts;
- ``GET /admin/users/{user_id}``: one user's devices, counts, notifications and deliveries.

The console's actions go through the service API itself (``/notify``, ``/publish``,
``/users/{user_id}/devices/{connection_id}``, ``/messages/{id}/retry``…) with its token.
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations.
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from prometheus_client.parser import text_string_to_metric_families

from tidings.api.callers import ERRORS
from tidings.api.common import RequireScope, check_identifier
from tidings.api.ports import ApiNode
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.errors import ApiError, InvalidArgument

WEB = Path(__file__).resolve().parent.parent / "web"


def mount_admin(app: FastAPI, tidings: ApiNode, require_scope: RequireScope) -> None:
    """Add the admin console and its JSON routes."""
    admin = [Depends(require_scope("admin"))]

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> FileResponse:
        return FileResponse(
            WEB / "admin.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/admin/overview", tags=["operations"], responses=ERRORS, dependencies=admin)
    async def overview(devices: int = 200, recent: int = 50) -> dict[str, Any]:
        """Nodes, their open sockets (with each device's queue depth), recent notifications
        and the pipeline's queued work per channel and state."""
        return await _overview(tidings, devices, recent)

    @app.get("/admin/stats", tags=["operations"], responses=ERRORS, dependencies=admin)
    async def stats() -> dict[str, Any]:
        """This node's own metrics (as ``GET /metrics`` exposes them), as JSON: open sockets,
        notifies and their latency (cumulative: rates come from two readings), frames,
        errors and the pipeline's queues and sends."""
        return node_stats(tidings.node_id, (await tidings.metrics.render()).decode())

    @app.get("/admin/users/{user_id}", tags=["operations"], responses=ERRORS, dependencies=admin)
    async def user(
        user_id: Annotated[str, PathParam(min_length=1, max_length=MAX_USER_ID_LENGTH)],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """A user: connected devices (with queue depth), push tokens, counts, recent
        notifications and the deliveries of recent pipeline messages."""
        try:
            check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return await _user(tidings, user_id, limit)


async def _overview(tidings: ApiNode, devices: int, recent: int) -> dict[str, Any]:
    store = tidings.store
    everyone = await store.presence()
    per_node: dict[str, int] = {}
    for p in everyone:
        per_node[p.node_id] = per_node.get(p.node_id, 0) + 1
    sockets = everyone[: max(0, min(devices, 1000))]
    depths = await store.queue_depths([(p.connection_id, p.user_id) for p in sockets])
    return {
        "nodes": [
            {
                "node_id": n.node_id,
                "uri": n.uri,
                "started_at": n.started_at,
                "heartbeat_at": n.heartbeat_at,
                "sockets": per_node.get(n.node_id, 0),
            }
            for n in await store.list_nodes()
        ],
        "sockets": [
            {
                "node_id": p.node_id,
                "user_id": p.user_id,
                "connection_id": p.connection_id,
                "session_id": p.session_id,
                "connected_since": p.connected_since,
                "queue_depth": depths.get(p.connection_id, 0),
            }
            for p in sockets
        ],
        "recent": [
            {**n.to_dict(), "seq": n.seq}
            for n in await store.recent_notifications(max(0, min(recent, 500)))
        ],
        "pipeline": await tidings.pipeline.store.depths(),
    }


async def _user(tidings: ApiNode, user_id: str, limit: int) -> dict[str, Any]:
    store = tidings.store
    sockets = await store.presence(user_id=user_id)
    # Every device, connected or not (a device away keeps its queue).
    devices = await store.devices_of(user_id)
    depths = await store.queue_depths([(d.connection_id, user_id) for d in devices])
    online = {p.connection_id: p for p in sockets}
    count = await tidings.count(user_id)
    notifications, _ = await tidings.notifications(user_id, limit=limit)
    return {
        "user_id": user_id,
        "counts": {
            "count": count.count,
            "unread": count.unread,
            "categories": count.categories or {},
            "version": count.version,
        },
        "devices": [
            {
                "connection_id": d.connection_id,
                "connected": d.connection_id in online,
                "session_id": online[d.connection_id].session_id
                if d.connection_id in online
                else None,
                "node_id": online[d.connection_id].node_id if d.connection_id in online else None,
                "connected_since": (
                    online[d.connection_id].connected_since if d.connection_id in online else None
                ),
                "last_seen_at": d.last_seen_at,
                "queue_depth": depths.get(d.connection_id, 0),
            }
            for d in devices
        ],
        "push_tokens": [
            {"token_id": t.token_id, "platform": t.platform, "app_id": t.app_id}
            for t in await store.push_tokens(user_id)
        ],
        "notifications": [n.to_dict() for n in notifications],
        "deliveries": await _deliveries(tidings, user_id, limit),
    }


async def _deliveries(tidings: ApiNode, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The user's latest deliveries, newest first (without their history)."""
    found = await tidings.pipeline.store.deliveries_of_user(user_id, limit)
    return [
        {"message_id": d.message_id, **{k: v for k, v in d.to_dict().items() if k != "history"}}
        for d in found
    ]


def node_stats(node_id: str, exposition: str) -> dict[str, Any]:
    """The figures the console charts, read from the node's Prometheus exposition."""
    samples: dict[str, float] = {}
    pipeline: dict[str, dict[str, int]] = {}
    sends: dict[str, dict[str, int]] = {}
    buckets: list[tuple[float, float]] = []
    errors = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "tidings_pipeline_deliveries":
                pipeline.setdefault(labels["channel"], {})[labels["state"]] = int(value)
            elif name == "tidings_pipeline_sends_total":
                sends.setdefault(labels["channel"], {})[labels["outcome"]] = int(value)
            elif name == "tidings_errors_total":
                errors += value
            elif name == "tidings_notify_seconds_bucket":
                buckets.append((float(labels["le"]), value))
            elif not labels:
                samples[name] = value
    return {
        "node_id": node_id,
        "at": time.time(),
        "connections": int(samples.get("tidings_connections", 0)),
        "users_connected": int(samples.get("tidings_users_connected", 0)),
        "notifies": int(samples.get("tidings_notify_seconds_count", 0)),
        "notify_seconds": samples.get("tidings_notify_seconds_sum", 0.0),
        "notify_buckets": [[le, int(n)] for le, n in sorted(buckets) if le != float("inf")],
        "frames_sent": int(samples.get("tidings_frames_sent_total", 0)),
        "frames_received": int(samples.get("tidings_frames_received_total", 0)),
        "errors": int(errors),
        "pipeline": pipeline,
        "sends": sends,
    }
