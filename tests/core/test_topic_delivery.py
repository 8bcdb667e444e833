"""Per-socket bookkeeping of topic messages and backlog pacing."""

from __future__ import annotations

import asyncio

from tidings.core.counters import Counters
from tidings.fanout.connection import Connection


class Sink:
    def __init__(self) -> None:
        self.frames: list[str] = []

    async def __call__(self, message: dict[str, object]) -> None:
        if message["type"] == "websocket.send":  # close frames are not recorded
            self.frames.append(str(message["text"]))


def conn() -> Connection:
    return Connection(
        Sink(), connection_id="c", user_id="u", session_id="s", max_queue=10, counters=Counters()
    )


def test_out_of_order_messages_are_all_delivered_once() -> None:
    """Messages overtaking each other (several publishers, large ones by reference) are each
    delivered exactly once."""
    c = conn()
    order = [2, 1, 3, 5, 4, 5, 2, 6]
    delivered = [seq for seq in order if c.mark_topic("t", seq)]
    assert delivered == [2, 1, 3, 5, 4, 6]
    assert c.topic_seq["t"] == 6 and c.topic_above["t"] == set()


def test_skip_until_folds_what_is_above() -> None:
    """Telling the socket the client has everything up to N keeps later seqs deduplicated."""
    c = conn()
    assert c.mark_topic("t", 7)
    c.skip_topic_until("t", 5)
    assert c.topic_seq["t"] == 5 and not c.mark_topic("t", 7)
    c.skip_topic_until("t", 6)
    assert c.topic_seq["t"] == 7
    assert not c.mark_topic("t", 3) and c.mark_topic("t", 8)


def test_window_is_bounded() -> None:
    """A seq still missing after 1024 later ones is given up on; memory stays bounded."""
    c = conn()
    for seq in range(2, 1030):
        c.mark_topic("t", seq)
    assert len(c.topic_above["t"]) <= 1024
    assert not c.mark_topic("t", 1)


async def test_wait_room_paces_a_backlog() -> None:
    """wait_room blocks while the queue could not take another page, and resumes as it
    drains."""
    sink = Sink()
    c = Connection(
        sink, connection_id="c", user_id="u", session_id="s", max_queue=10, counters=Counters()
    )
    for i in range(8):
        c.push(str(i))  # queued: the writer has not started yet
    waiter = asyncio.create_task(c.wait_room(5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    c.open()
    await asyncio.wait_for(waiter, 2)
    c.close()
    await asyncio.gather(c.finished(), return_exceptions=True)
    assert sink.frames[:1] == ["0"]
