"""The one lifecycle vocabulary of tidings' long-lived objects: ``start()``, ``close()`` and
``async with``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Lifecycle(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Acquire resources (connections, tasks). Calling it twice is harmless."""

    @abstractmethod
    async def close(self) -> None:
        """Release them. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
