"""Eager sends: an ASGI server's ``send`` run at once, in the caller, as far as it goes.

A fan-out on an ASGI server other than tidings' own pushes one frame to each of many sockets;
most sends complete without waiting (the socket's buffer has room). Running each in a task of
its own costs a task and a turn of the loop per socket and frame; running it here costs one
``coro.send(None)``, and only a send that has to wait is finished in a task. This is what
Python 3.12's eager tasks (``asyncio.Task(coro, eager_start=True)``) do, for Python 3.11.
It also keeps a send's effects in order with the caller's: a frame pushed to an idle socket is
with the server when ``push`` returns, and a send that fails at once is known at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

logger = logging.getLogger("tidings.gateway")


def send_eagerly(send: Awaitable[None]) -> Awaitable[None] | None:
    """Start ``send`` (what an ASGI ``send(message)`` returned) now: None if it completed,
    else an awaitable that finishes it exactly as a task would have (await it in one).

    Raises:
        Exception: whatever the send raised before its first wait.
    """
    if not inspect.iscoroutine(send):  # an ASGI server may return any awaitable
        return send
    try:
        blocker = send.send(None)
    except StopIteration:
        return None
    return _finish(send, blocker)


async def _finish(coro: Any, blocker: Any) -> None:
    """Go on with a send that had to wait, exactly as a task would drive it."""
    while True:
        try:
            if isinstance(blocker, asyncio.Future):
                await asyncio.wait([blocker])
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            # Cancelled (the connection closed): cancel what the send waits for and let the
            # send unwind through its own handlers, as cancelling its task would.
            if isinstance(blocker, asyncio.Future):
                blocker.cancel()
            try:
                coro.throw(asyncio.CancelledError())
            except (asyncio.CancelledError, StopIteration):
                pass
            except Exception as exc:
                logger.debug("a cancelled send ended with %r", exc)
            finally:
                coro.close()
            raise
        try:
            blocker = coro.send(None)
        except StopIteration:
            return
        except asyncio.CancelledError:  # the server gave up on this socket
            raise ConnectionError("send cancelled by the server") from None
