"""asyncpg details shared by the PostgreSQL store and bus."""

from __future__ import annotations

from tidings.errors import MissingDependencyError

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("asyncpg", "postgres") from exc

#: Errors that mean "PostgreSQL cannot be reached right now", not "the request is wrong".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionFailureError,
)

__all__ = ["UNAVAILABLE", "asyncpg"]
