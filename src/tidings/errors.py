"""Exceptions raised by tidings.

Every error derives from :class:`TidingsError`; each layer has its own subtree::

    TidingsError
    ├── InvalidArgument             a caller passed a bad value (also a ValueError)
    │   ├── PayloadTooLarge         a notification's data is over the size limit
    │   ├── TemplateFailure         a template does not compile or render
    │   ├── InvalidAddress          a contact point is not usable
    │   └── UnparsableBody          an HTTP body nested past what JSON readers take
    ├── ConfigurationError          a setting is missing or wrong
    │   └── MissingDependencyError  an optional extra is not installed
    ├── StoreError                  the storage backend failed
    │   ├── StoreUnavailable        the database cannot be reached (retry later)
    │   ├── NotFound                an id does not exist for this user
    │   └── Conflict                an id exists with other content (idempotency clash)
    ├── BusError                    the node-to-node bus failed
    ├── AuthError                   credentials are missing, malformed or refused
    │   ├── InvalidToken            a token failed verification or has expired
    │   ├── IssuerUnavailable       a token issuer's keys cannot be fetched (retry later)
    │   ├── InsufficientScope       a valid service token lacks the scope
    │   ├── TopicRefused            the topic policy refused topics
    │   ├── DelegateUnavailable     the application's subscribe endpoint did not answer
    │   ├── InvalidClient           unknown OAuth client or wrong secret
    │   └── InvalidScope            a requested scope exceeds the client's
    ├── LimitExceeded               a configured limit refused the request
    │   └── TooManyConnections      a user has the most sockets allowed across the cluster
    ├── ProtocolError               a client frame breaks the wire contract
    ├── ProtocolFailure             a WebSocket peer broke RFC 6455: close with ``code``
    ├── DeliveryFailure             a channel's send did not succeed
    │   ├── TransientFailure        worth another try (retried with backoff)
    │   └── PermanentFailure        never succeeds as it is
    ├── ForbiddenAddress            a provider's name resolved to a non-public address
    │                               (also an OSError, as resolvers raise)
    ├── ApiError                    an HTTP API error answered as {"error", "message"}
    └── ClientError                 the server refused a request of tidings.client

Backends wrap driver exceptions with ``raise … from exc`` so callers only ever
catch tidings' own types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TidingsError(Exception):
    """Base class of every error raised by tidings."""


class InvalidArgument(TidingsError, ValueError):
    """A caller passed a value that breaks the API's rules; nothing was changed."""


class PayloadTooLarge(InvalidArgument):
    """A notification's ``data`` encodes to more bytes than allowed."""


class ConfigurationError(TidingsError):
    """A setting is missing, malformed or inconsistent."""


class MissingDependencyError(ConfigurationError):
    """An optional dependency is needed for the requested backend."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is required for this backend; install tidings with the '{extra}' "
            f"extra: pip install '.[{extra}]' in a checkout, or pip install "
            f"'tidings-<version>-py3-none-any.whl[{extra}]' (docs/deployment.md#installing)"
        )
        self.package = package
        self.extra = extra


class StoreError(TidingsError):
    """The storage backend failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; nothing was written. Retry later."""


class NotFound(StoreError):
    """One or more ids do not exist (or do not belong to the caller)."""

    def __init__(self, message: str, ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.ids = list(ids)


class Conflict(StoreError):
    """An idempotency key is already used with different content."""


class BusError(TidingsError):
    """The node-to-node bus failed."""


class AuthError(TidingsError):
    """Credentials are missing, malformed or refused."""


class InvalidToken(AuthError):
    """A token failed verification, is malformed or has expired."""


class IssuerUnavailable(AuthError):
    """The keys of a token's issuer cannot be fetched right now; retry later."""


class InsufficientScope(AuthError):
    """A valid service token does not carry the scope the call needs."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this call needs the scope {scope!r}")
        self.scope = scope


class TopicRefused(AuthError, PermissionError):
    """The user may not subscribe to (or read) these topics; ``topics`` lists them."""

    def __init__(self, topics: list[str]) -> None:
        super().__init__(f"not allowed: {', '.join(topics)}")
        self.topics = topics


class LimitExceeded(TidingsError):
    """A configured limit refused the request; nothing was changed."""


class TooManyConnections(LimitExceeded):
    """The user already holds ``TIDINGS_MAX_CONNECTIONS_PER_USER`` sockets in the cluster.

    ``device`` is the device bound meanwhile, when the refusal comes from
    :meth:`~tidings.storage.base.Store.open_socket` (it stays bound: the device may come back
    once another socket has closed)."""

    def __init__(self, message: str, device: Any = None) -> None:
        super().__init__(message)
        self.device = device


class ProtocolError(TidingsError):
    """A client frame breaks the wire contract.

    ``code`` is the machine-readable code sent in the ``error`` frame.
    """

    def __init__(self, code: str, message: str, frame_id: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


class ClientError(TidingsError):
    """The server answered a :mod:`tidings.client` request with an error.

    ``status`` is the HTTP status (``None`` for a WebSocket ``error`` frame), ``code`` the
    server's error code.
    """

    def __init__(self, code: str, message: str, status: int | None = None, **details: object):
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details


class TemplateFailure(InvalidArgument):
    """A template does not compile or does not render with the message's data."""


class InvalidAddress(InvalidArgument):
    """A contact point (email address, URL, push subscription, phone number) is not usable."""


class UnparsableBody(InvalidArgument):
    """A body nested past what the standard library's JSON reader takes: FastAPI answers it
    400 ``{"detail": "There was an error parsing the body"}``, and so does the fast path."""

    body = b'{"detail":"There was an error parsing the body"}'


class DelegateUnavailable(AuthError):
    """The application's subscribe endpoint did not answer usably (retry later)."""


class InvalidClient(AuthError):
    """Unknown client or wrong secret (RFC 6749 ``invalid_client``)."""


class InvalidScope(AuthError):
    """The requested scope exceeds the client's (RFC 6749 ``invalid_scope``)."""


class ProtocolFailure(TidingsError):
    """A WebSocket peer broke RFC 6455; the connection closes with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class DeliveryFailure(TidingsError):
    """A send did not succeed. ``reason`` is a short machine-readable word recorded on the
    delivery (``provider_error``, ``rejected``, ``timeout``, ``unreachable``, ``gone`` …);
    the message is the provider's own words, recorded as the delivery's ``last_error``."""

    def __init__(self, reason: str, message: str, notes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: what happened at each of several addresses (a user's push tokens), as
        #: ``(reason, detail)`` pairs: each becomes an entry of the delivery's history
        self.notes = notes


class TransientFailure(DeliveryFailure):
    """Worth another try: the delivery is retried with backoff. ``retry_after`` (seconds) is
    the provider's own hint, when it gave one (HTTP ``Retry-After``)."""

    def __init__(
        self,
        reason: str,
        message: str,
        retry_after: float | None = None,
        notes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason, message, notes)
        self.retry_after = retry_after


class PermanentFailure(DeliveryFailure):
    """Never succeeds as it is: the delivery goes ``failed`` with this reason."""


class ForbiddenAddress(TidingsError, OSError):
    """A name resolved to a non-public address (raised by the channels' guarded resolver;
    an OSError too, which is what HTTP clients expect a resolver to raise)."""


class ApiError(TidingsError):
    """An error answered as ``{"error": code, "message": …}`` with HTTP ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
