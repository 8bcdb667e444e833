"""python-socketio peer for the benchmarks: AsyncServer under uvicorn.

Clients emit ``join`` with a room name and get ``joined``; ``POST /publish`` with a JSON body
``{"topic": ..., "data": ...}`` emits ``msg`` with ``data`` to the room.

    python bench/peers/socketio_server.py PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")


@sio.on("join")  # type: ignore[misc]
async def join(sid: str, room: str) -> None:
    await sio.enter_room(sid, room)
    await sio.emit("joined", room, to=sid)


async def publish_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    await sio.emit("msg", request["data"], room=request["topic"])
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


app = socketio.ASGIApp(sio, other_asgi_app=publish_app)

if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", ws="websockets-sansio"
    )
