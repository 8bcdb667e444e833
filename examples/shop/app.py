"""A small shop that uses tidings for its notifications, in both deployment modes.

- Embedded: the shop's own ``/subscribe`` WebSocket authenticates the device with the shop's
  session cookie, as every shop endpoint does, and hands it to ``tidings.subscribe()``;
  ``POST /orders`` calls ``tidings.notify()``.
- Separate service: ``GET /auth`` is the subscribe URL a tidings service delegates device
  authentication to (``TIDINGS_DELEGATE_URL``); it only authenticates and answers the user.

Run it::

    uvicorn examples.shop.app:app --port 8080

Environment: ``SHOP_SECRET`` signs session cookies; ``SHOP_TIDINGS_STORE`` is the embedded
tidings store (default ``sqlite:///shop-tidings.db``); ``SHOP_AUTH_DELAY`` makes ``/auth`` slow
(to show tidings' timeout).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import os
from typing import Annotated

from fastapi import Cookie, FastAPI, HTTPException, Response, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tidings import Tidings

SECRET = os.environ.get("SHOP_SECRET", "change-me-" + "s" * 32).encode()
USERS = {"alice": "wonderland", "bob": "builder"}  # a real shop has a user table
COOKIE = "shop_session"

tidings = Tidings(
    store=os.environ.get("SHOP_TIDINGS_STORE", "sqlite:///shop-tidings.db"), bus="memory://"
)
app = FastAPI(title="shop", lifespan=tidings.lifespan)
# tidings' own endpoints too: devices holding a JWT on /push/ws, the service API on /push/...
app.mount("/push", tidings.asgi())
order_numbers = itertools.count(1000)


def sign(user: str) -> str:
    mac = hmac.new(SECRET, user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{mac}"


def user_of(cookie: str | None) -> str | None:
    """The user of a session cookie, or None: how every shop endpoint authenticates."""
    if not cookie or "." not in cookie:
        return None
    user, _, mac = cookie.rpartition(".")
    expected = hmac.new(SECRET, user.encode(), hashlib.sha256).hexdigest()
    return user if hmac.compare_digest(mac, expected) and user in USERS else None


class Credentials(BaseModel):
    username: str
    password: str


@app.post("/login")
async def login(credentials: Credentials, response: Response) -> dict[str, str]:
    if USERS.get(credentials.username) != credentials.password:
        raise HTTPException(401, "wrong username or password")
    response.set_cookie(COOKIE, sign(credentials.username), httponly=True, samesite="lax")
    return {"user": credentials.username}


@app.post("/orders")
async def order(shop_session: Annotated[str | None, Cookie()] = None) -> dict[str, object]:
    user = user_of(shop_session)
    if user is None:
        raise HTTPException(401, "log in first")
    number = next(order_numbers)
    result = await tidings.notify(user, {"text": f"Order {number} confirmed", "order": number})
    return {"order": number, "notification_id": result.notification.notification_id}


@app.websocket("/subscribe")
async def subscribe(websocket: WebSocket) -> None:
    """Embedded mode: the shop authenticates, tidings serves the device."""
    user = user_of(websocket.cookies.get(COOKIE))
    if user is None:
        # Refused at the handshake with HTTP 401, like tidings' own /ws.
        await websocket.send_denial_response(JSONResponse({"error": "log in first"}, 401))
        return
    await tidings.subscribe(
        websocket,
        user_id=user,
        session_id=websocket.query_params.get("session_id"),
        deliver=websocket.query_params.get("deliver") == "1",
    )


@app.get("/auth")
async def auth(shop_session: Annotated[str | None, Cookie()] = None) -> JSONResponse:
    """Separate-service mode: tidings forwards the device's cookies here; answer who it is."""
    delay = float(os.environ.get("SHOP_AUTH_DELAY", "0"))
    if delay:
        await asyncio.sleep(delay)
    user = user_of(shop_session)
    if user is None:
        return JSONResponse({"error": "not logged in"}, status_code=401)
    return JSONResponse({"user_id": user})
