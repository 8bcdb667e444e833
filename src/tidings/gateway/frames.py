"""RFC 6455 frames, sans I/O: what a server writes, and a reader that turns a client's bytes
into messages and control frames.

Nothing here touches a socket or an event loop: :class:`Reader` is fed bytes as they arrive
and returns what they completed; the functions build the bytes a server sends. The asyncio
transport (:mod:`tidings.gateway.transport`) only feeds the one and writes the other.

What the reader refuses (the codes of RFC 6455 section 7.4, :class:`CloseCode`): frames with
RSV bits (no extension is ever negotiated: permessage-deflate costs 30-40 KiB per connection),
unmasked frames, long or fragmented control frames, unknown opcodes, a continuation without a
message or a new message inside one (1002); a message over ``max_size`` bytes, refused as soon
as a frame header announces too much, or in more fragments than one per
``BYTES_PER_FRAGMENT`` of that (1009); invalid UTF-8 in a text message, refused as soon as the
bytes that make it invalid arrive, also in the middle of a frame (1007).
"""

from __future__ import annotations

import base64
import codecs
import enum
import hashlib
import struct
from typing import TypeAlias

from tidings.core.codes import CloseCode, valid_close_code
from tidings.errors import ProtocolFailure

try:  # websockets (a dependency of uvicorn[standard]) ships the masking loop in C
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - platforms without the compiled helper
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: a fragmented message may have one fragment per this many bytes of ``max_size`` (and at
#: least ``MIN_FRAGMENTS``): a 4 MiB limit allows a 4 MiB message in 64-byte fragments
#: (Autobahn 9.3.1), while a run of empty continuation frames is cut off early (1009)
BYTES_PER_FRAGMENT = 64
MIN_FRAGMENTS = 1024


class Opcode(enum.IntEnum):
    """The opcodes of RFC 6455 section 5.2; 0x8 and above are control frames."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


#: what :meth:`Reader.feed` returns, in order: ``(Opcode.TEXT, str)`` and
#: ``(Opcode.BINARY, bytes)`` for whole messages, ``(opcode, payload)`` for control frames
#: (the close frame's payload still to be read with :func:`parse_close`), and a
#: :class:`ProtocolFailure` last when the client broke the protocol
Event: TypeAlias = tuple[int, str | bytes] | ProtocolFailure


# What a server writes


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final server frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def text_frame(text: str) -> bytes:
    """A whole text message as one server frame."""
    payload = text.encode()
    n = len(payload)
    return bytes((0x81, n)) + payload if n < 126 else frame_header(Opcode.TEXT, n) + payload


def binary_frame(data: bytes) -> bytes:
    return frame_header(Opcode.BINARY, len(data)) + data


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: ``code`` and at most 123 bytes of ``reason``, cut on a
    character boundary (it must stay valid UTF-8)."""
    return struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()


def close_frame(code: int, reason: str = "") -> bytes:
    payload = close_payload(code, reason)
    return frame_header(Opcode.CLOSE, len(payload)) + payload


def pong_frame(payload: bytes) -> bytes:
    return frame_header(Opcode.PONG, len(payload)) + payload


#: the keepalive ping: empty, since any answer (or any other frame) shows the client is alive
PING = bytes((0x80 | Opcode.PING, 0))


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame (1005 when it has none).

    Raises:
        ProtocolFailure: a one-byte payload or a code not allowed on the wire (1002), a reason
            that is not UTF-8 (1007).
    """
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    # 1010 is the client's own code: allowed from it, though a server may not send it
    if not (valid_close_code(code) or code == CloseCode.MANDATORY_EXTENSION):
        raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolFailure(CloseCode.INVALID_DATA, "invalid UTF-8 in the close reason") from None
    return code, reason


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def valid_key(key: bytes) -> bool:
    """Whether ``key`` is a ``Sec-WebSocket-Key``: 16 bytes in base64."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


# What a client sends


class Reader:
    """A client's frames, parsed as their bytes arrive.

    :meth:`feed` takes what the socket read and returns every message and control frame it
    completed. A text message still arriving is decoded as far as it came, so invalid UTF-8
    fails at once, not once a long message is complete; a message's fragments are summed as
    they come, so a long run costs linear time. After a close frame or a failure the reader
    is done and ignores what follows."""

    __slots__ = ("_buf", "_message", "done", "max_fragments", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.max_fragments = max(MIN_FRAGMENTS, max_size // BYTES_PER_FRAGMENT)
        #: bytes received and not parsed yet: the start of a frame (a bytearray, appended to
        #: in place, while a frame arrives in several reads)
        self._buf: bytes | bytearray = b""
        #: the message whose frames are arriving, once it spans more than one read or frame
        self._message: _Message | None = None
        self.done = False

    @property
    def buffered(self) -> int:
        """Bytes kept and not parsed yet."""
        return len(self._buf)

    def keep(self, data: bytes | bytearray) -> None:
        """Keep ``data`` for later, unparsed (frames that arrive before the handshake is
        answered); the next :meth:`feed` parses them first."""
        if self._buf:
            self._buf += data
        else:
            self._buf = bytearray(data)

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Parse ``data`` after whatever was kept; what it completed, in order."""
        events: list[Event] = []
        if self.done:
            return events
        received: bytes | bytearray = data
        buf = self._buf
        if buf:
            buf += data  # a bytearray: a long frame arriving in many reads is copied once
            received = buf
        try:
            self._parse(received, events)
        except ProtocolFailure as failure:
            self.done = True
            self._buf = b""
            self._message = None
            events.append(failure)
        return events

    def _parse(self, data: bytes | bytearray, events: list[Event]) -> None:
        """Handle every whole frame in ``data`` and keep the rest (the start of a frame)."""
        size = len(data)
        pos = 0
        while not self.done:
            if size - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if b0 & 0x70:
                raise ProtocolFailure(
                    CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)"
                )
            if not b1 & 0x80:
                raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                if length > 125 or not b0 & 0x80:
                    raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, "invalid control frame")
                if opcode > Opcode.PONG:
                    raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif length > self.max_size:
                raise ProtocolFailure(
                    CloseCode.MESSAGE_TOO_BIG, f"frame over {self.max_size} bytes"
                )
            start = pos + head + 4
            end = start + length
            if end > size:
                if opcode < 0x8 and size > start:
                    self._partial_frame(opcode, data, start, length, data[start - 4 : start])
                break
            mask = data[start - 4 : start]
            pos = end
            if opcode >= 0x8:
                events.append((opcode, apply_mask(data[start:end], mask)))
                if opcode == Opcode.CLOSE:
                    self.done = True
            elif b0 & 0x80 and opcode != Opcode.CONT and self._message is None:
                # a whole message in one frame: the common case, without a _Message
                events.append(_whole(opcode, apply_mask(data[start:end], mask)))
            else:
                self._fragment(b0 & 0x80, opcode, data, start, end, mask, events)
        if pos >= size or self.done:
            self._buf = b""
            if self.done:
                self._message = None
        elif data is self._buf:
            del data[:pos]  # type: ignore[union-attr]  # only a bytearray is kept
        else:
            self._buf = bytearray(data[pos:])

    def _message_for(self, opcode: int) -> _Message:
        """The message a data frame belongs to (RFC 6455 section 5.4): a text or binary frame
        starts one, a continuation frame needs one; the rest of a frame that arrived in part
        belongs to the message its start did."""
        if opcode not in (Opcode.CONT, Opcode.TEXT, Opcode.BINARY):
            raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        message = self._message
        if message is None:
            if opcode == Opcode.CONT:
                raise ProtocolFailure(
                    CloseCode.PROTOCOL_ERROR, "continuation frame without a message"
                )
            message = self._message = _Message(opcode)
        elif message.in_frame is None and opcode != Opcode.CONT:
            raise ProtocolFailure(
                CloseCode.PROTOCOL_ERROR, "new message before the previous one ended"
            )
        return message

    def _partial_frame(
        self, opcode: int, data: bytes | bytearray, start: int, length: int, mask: bytes | bytearray
    ) -> None:
        """Part of a data frame's payload has arrived: check that the message will fit, and
        decode what is new of a text message."""
        if opcode == Opcode.BINARY and self._message is None:
            return  # a binary message's first frame: nothing to check before its end
        message = self._message_for(opcode)
        message.in_frame = opcode
        if message.size + length > self.max_size:
            raise ProtocolFailure(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
        available = min(len(data), start + length)
        if message.decoder is not None:
            done = message.checked
            if available - start > done:
                message.decode(apply_mask(data[start + done : available], _rotate(mask, done)))
                message.checked = available - start

    def _fragment(
        self,
        fin: int,
        opcode: int,
        data: bytes | bytearray,
        start: int,
        end: int,
        mask: bytes | bytearray,
        events: list[Event],
    ) -> None:
        """A whole data frame of a message in several frames (or that arrived in several
        reads)."""
        message = self._message_for(opcode)
        message.in_frame = None
        message.fragments += 1
        message.size += end - start
        if message.size > self.max_size:
            raise ProtocolFailure(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
        if message.fragments > self.max_fragments:
            raise ProtocolFailure(
                CloseCode.MESSAGE_TOO_BIG, f"message in over {self.max_fragments} fragments"
            )
        done = message.checked
        message.checked = 0
        payload = apply_mask(data[start + done : end], _rotate(mask, done))
        if message.decoder is not None:
            message.decode(payload, final=bool(fin))
        else:
            message.chunks.append(payload)
        if fin:
            self._message = None
            if message.decoder is not None:
                events.append((Opcode.TEXT, "".join(message.texts)))
            else:
                events.append((Opcode.BINARY, b"".join(message.chunks)))


def _whole(opcode: int, payload: bytes) -> tuple[int, str | bytes]:
    """A message that came in one frame."""
    if opcode == Opcode.TEXT:
        try:
            return opcode, payload.decode()
        except UnicodeDecodeError:
            raise ProtocolFailure(
                CloseCode.INVALID_DATA, "invalid UTF-8 in a text message"
            ) from None
    if opcode == Opcode.BINARY:
        return opcode, payload
    raise ProtocolFailure(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")


class _Message:
    """A message whose frames are still arriving: its parts so far, and for text the UTF-8
    decoder that checks each part as it comes (RFC 6455 section 8.1 asks to fail fast)."""

    __slots__ = ("checked", "chunks", "decoder", "fragments", "in_frame", "size", "texts")

    def __init__(self, opcode: int) -> None:
        self.decoder = _utf8_decoder() if opcode == Opcode.TEXT else None
        self.texts: list[str] = []
        self.chunks: list[bytes] = []
        #: bytes and whole frames so far
        self.size = 0
        self.fragments = 0
        #: the opcode of a frame of which only a part has arrived (else None), and how many
        #: bytes of its payload were already decoded
        self.in_frame: int | None = None
        self.checked = 0

    def decode(self, data: bytes, final: bool = False) -> None:
        if self.decoder is None:
            return
        try:
            text = self.decoder.decode(data, final)
        except UnicodeDecodeError:
            raise ProtocolFailure(
                CloseCode.INVALID_DATA, "invalid UTF-8 in a text message"
            ) from None
        if text:
            self.texts.append(text)


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _rotate(mask: bytes | bytearray, offset: int) -> bytes | bytearray:
    """The masking key for a payload that starts ``offset`` bytes into a frame's."""
    k = offset % 4
    return mask[k:] + mask[:k] if k else mask
