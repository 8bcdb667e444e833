"""One text message sent to many sockets, encoded for the wire once."""

from __future__ import annotations

from collections.abc import Callable


class Broadcast:
    """A text frame's text, shared by every socket of a fan-out.

    The registry wraps the text of a topic message or a count once and pushes the same
    :class:`Broadcast` to each connection. A transport that writes frames itself (tidings' own,
    :meth:`tidings.gateway.transport.WebSocketProtocol.write_text`) asks for :meth:`encoded`:
    the first socket encodes the frame, the others reuse its bytes. Any other ASGI server gets
    :attr:`text` in a ``websocket.send`` message, as for a plain str.

    Cost: one small object per fan-out, and the encoded frame (the text's UTF-8 and a 2 to 10
    byte header) held as long as the broadcast is, that is until the last socket that queued
    it has sent it. Without it each socket encodes and copies the text itself: a fan-out to a
    thousand sockets did a thousand ``str.encode`` calls per message."""

    __slots__ = ("_encoded", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._encoded: bytes | None = None

    def encoded(self, encode: Callable[[str], bytes]) -> bytes:
        """``encode(self.text)``, computed on the first call and reused after. Every caller
        must pass the same function (a transport's text-frame encoder): the first result is
        kept whoever asks."""
        data = self._encoded
        if data is None:
            data = self._encoded = encode(self.text)
        return data

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return f"Broadcast({self.text!r})"


#: what a connection sends: a str, or a text shared by a fan-out
Text = str | Broadcast


def text_of(message: Text) -> str:
    return message if isinstance(message, str) else message.text
