"""Logging: plain text for a terminal, or one JSON object per line for a log collector, each
record carrying the request or connection it belongs to.

The standard library's logging with a small formatter, not structlog: every library in the
process (uvicorn, asyncpg, httpx) already logs through ``logging``, and one formatter turns
all of them into JSON without routing them through another pipeline.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson


class LogSubject(Protocol):
    """What a task serves (a request, a device connection): its fields for log records,
    worked out only when a record is logged."""

    def log_fields(self) -> dict[str, object]: ...


#: the request the current task serves; its fields are read when a record is formatted. Device
#: connections pass theirs as ``extra=conn.log_fields()`` instead: a context variable set in
#: each connection's task cost 0.3 KiB per idle connection (measured with 19,800).
log_context: ContextVar[LogSubject | None] = ContextVar("tidings_log_context", default=None)


def _context() -> dict[str, object]:
    subject = log_context.get()
    return subject.log_fields() if subject is not None else {}


#: record attributes that are not extra fields (uvicorn adds color_message for terminals)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", <context>, <extra>, "exc"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [key=value …]`` with the request or connection's fields."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context()
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return text


class RedactTokens(logging.Filter):
    """Keeps device tokens passed as ``?access_token=`` and bearer tokens out of the logs."""

    pattern = re.compile(r"(access(?:_|%5F)token=|Bearer\s+)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and self.pattern.search(record.msg):
            record.msg = self.pattern.sub(r"\1[redacted]", record.msg)
        return True


def safe_url(url: str) -> str:
    """``url`` with its password replaced, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every logger's records to stderr in ``fmt`` (``text`` or ``json``), tokens
    redacted."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers keep handlers of their own unless told to propagate to ours
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
