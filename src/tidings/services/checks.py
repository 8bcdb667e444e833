"""Checks of what an application hands the node: ids and JSON data, refused before any write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tidings.core.limits import MAX_DATA_DEPTH, MAX_ID_LENGTH, MAX_IDS_PER_FRAME, MAX_USER_ID_LENGTH
from tidings.core.models import nests_deeper, too_deep_message, walk_nests_deeper
from tidings.errors import InvalidArgument, PayloadTooLarge


def check_identifier(name: str, value: object, max_length: int) -> None:
    """Raises:
    InvalidArgument: ``value`` is not a string of 1 to ``max_length`` characters without NUL.
    """
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        raise InvalidArgument(
            f"{name} must be a string of 1 to {max_length} characters without NUL"
        )


def check_ids(user_id: str, notification_ids: Sequence[str]) -> None:
    """Raises:
    InvalidArgument: a bad user id or notification id, or too many ids for one call.
    """
    check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
    if len(notification_ids) > MAX_IDS_PER_FRAME:
        raise InvalidArgument(f"at most {MAX_IDS_PER_FRAME} ids per call")
    for nid in notification_ids:
        check_identifier("notification_id", nid, MAX_ID_LENGTH)


def check_data(data: Any, max_size: int) -> None:
    """Refuse data that JSON cannot carry faithfully, or that frames could not write.

    Raises:
        InvalidArgument: ``data`` is not JSON, holds NaN or Infinity, or nests too deep.
        PayloadTooLarge: ``data`` is over ``max_size`` bytes of JSON.
    """
    try:
        encoded = orjson.dumps(data)
    except TypeError as exc:
        if walk_nests_deeper(data, MAX_DATA_DEPTH):  # past orjson's own limit
            raise InvalidArgument(too_deep_message()) from None
        raise InvalidArgument(f"data is not JSON-serialisable: {exc}") from None
    size = len(encoded)
    # orjson writes NaN and Infinity as null: only data with a null can hold one.
    if b"null" in encoded and not _finite(data):
        # JSON has no NaN or Infinity; stored, they would silently come back as null.
        raise InvalidArgument("data contains NaN or Infinity, which JSON cannot carry")
    if size > max_size:
        raise PayloadTooLarge(f"data is {size} bytes of JSON; the limit is {max_size}")
    # Frames and answers wrap data in a few more levels: refuse what they could not write.
    # (Shorter data cannot nest that deep: most data costs the length test only.)
    if size > 2 * MAX_DATA_DEPTH + 1 and nests_deeper(data, encoded):
        raise InvalidArgument(too_deep_message())


def _finite(value: Any) -> bool:
    """No NaN or infinite float anywhere in a JSON value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True
