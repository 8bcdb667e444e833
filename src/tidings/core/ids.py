"""Ids: device ids a client may choose, random ids, and notification ids that sort by time."""

from __future__ import annotations

import binascii
import os
import re
import secrets
import time

#: A device id a client may present or choose.
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def new_id() -> str:
    """A random, URL-safe, 128-bit id."""
    return secrets.token_urlsafe(16)


# base64's URL-safe alphabet, and the same 64 characters in ASCII order (mapped from the
# standard alphabet, which binascii writes)
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SORTED = bytes.maketrans(_STD, bytes(sorted(_B64)))


def new_sorted_id() -> str:
    """A URL-safe, 128-bit id that sorts by creation time: 48 bits of milliseconds, then 80
    random bits, in a base64 alphabet in ASCII order (22 characters).

    Notification ids are inserted into unique B-tree indexes: random ids dirty a page per row
    once the index outgrows the cache; ids in time order append (docs/benchmarks.md). The
    random bits come straight from ``os.urandom``: nothing kept between calls, so nothing to
    reset at a fork."""
    return _sorted_id(_stamp(), os.urandom(10))


def new_sorted_ids(n: int) -> list[str]:
    """``n`` ids as :func:`new_sorted_id` makes them, for one batch: one clock reading and one
    read of random bytes for all (``bench/values.py`` measures both)."""
    stamp = _stamp()
    random = os.urandom(10 * n)
    encode = binascii.b2a_base64  # _sorted_id inlined: no call per id
    return [
        encode(stamp + random[at : at + 10], newline=False)[:22].translate(_SORTED).decode()
        for at in range(0, 10 * n, 10)
    ]


def _stamp() -> bytes:
    """The current millisecond, as 48 bits."""
    return (time.time_ns() // 1_000_000).to_bytes(6, "big")


def _sorted_id(stamp: bytes, random: bytes) -> str:
    return binascii.b2a_base64(stamp + random, newline=False)[:22].translate(_SORTED).decode()
