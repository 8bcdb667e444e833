"""Notification ids: URL-safe, 22 characters, unique, and sorted by creation time (the
SQLite store inserts them into a unique index, where time order appends)."""

from __future__ import annotations

import base64
import os
import re
import time

from tidings.core.ids import CONNECTION_ID, new_id, new_sorted_id, new_sorted_ids

SORTED_ALPHABET = bytes(sorted(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def stamp_of(sorted_id: str) -> int:
    """The milliseconds an id carries (its first 48 bits)."""
    standard = sorted_id.encode().translate(bytes.maketrans(SORTED_ALPHABET, STANDARD))
    raw = base64.b64decode(standard + b"==")
    assert len(raw) == 16
    return int.from_bytes(raw[:6], "big")


def test_ids_are_url_safe_and_22_characters() -> None:
    for nid in [new_sorted_id(), *new_sorted_ids(100)]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", nid), nid
        assert CONNECTION_ID.match(nid)
    assert CONNECTION_ID.match(new_id())


def test_ids_carry_the_time_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    first = new_sorted_id()
    time.sleep(0.003)
    batch = new_sorted_ids(50)
    time.sleep(0.003)
    last = new_sorted_id()
    after = time.time_ns() // 1_000_000
    assert before <= stamp_of(first) < stamp_of(batch[0]) < stamp_of(last) <= after
    assert len({stamp_of(nid) for nid in batch}) == 1  # one clock reading per batch
    assert all(first < nid < last for nid in batch)


def test_ids_are_unique() -> None:
    ids = new_sorted_ids(20_000) + [new_sorted_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert new_sorted_ids(0) == []


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    """No random bytes are kept between calls: parent and child after a fork differ."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, "".join(new_sorted_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_sorted_id()[8:] for _ in range(50)}
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    child = {text[at + 8 : at + 22] for at in range(0, len(text), 22)}
    assert len(child) == 50
    assert not parent & child
