"""Helpers shared by the storage backends."""

from __future__ import annotations

import re
import secrets
from importlib import resources
from typing import Any

import orjson

#: A device id a client may present or choose.
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def new_id() -> str:
    """A random, URL-safe, 128-bit id."""
    return secrets.token_urlsafe(16)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys: equal values give equal bytes (for idempotency checks)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of the packaged migrations of ``dialect``, in order."""
    folder = resources.files("tidings.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name[:-4], entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_sql(script: str) -> list[str]:
    """Statements of a migration file (they hold no ';' or '--' inside literals)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
