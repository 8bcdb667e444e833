"""The SQLite URL: a file, and the page cache per connection (``?cache_mb=``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.errors import ConfigurationError
from tidings.storage.sqlite import SqliteStore


async def test_cache_size_comes_from_the_url(tmp_path: Path) -> None:
    """``?cache_mb=4`` gives each connection 4 MiB of page cache (32 without it)."""
    assert SqliteStore(f"sqlite:///{tmp_path}/a.db").cache_mib == 32
    async with SqliteStore(f"sqlite:///{tmp_path}/b.db?cache_mb=4") as store:
        assert store.path == f"{tmp_path}/b.db"
        size = await store._read(lambda conn: conn.execute("PRAGMA cache_size").fetchone()[0])
        assert size == -4096


@pytest.mark.parametrize("value", ["0", "-1", "lots", "70000"])
def test_a_bad_cache_size_is_refused(value: str) -> None:
    """A cache size that is not 1 to 65536 MiB is a configuration error."""
    with pytest.raises(ConfigurationError, match="cache_mb"):
        SqliteStore(f"sqlite:///x.db?cache_mb={value}")
