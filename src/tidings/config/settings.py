"""The :class:`Settings` of a node, read from keyword arguments, flags or ``TIDINGS_*``
environment variables (docs/configuration.md).

List settings take JSON (``["a", "b"]``) or comma-separated values (``a,b``); mapping settings
take JSON."""

from __future__ import annotations

import json
import os
import socket
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict

from tidings.config.providers import ProviderSettings


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _default(info: ValidationInfo) -> Any:
    assert info.field_name is not None
    return Settings.model_fields[info.field_name].get_default(call_default_factory=True)


def _list_value(value: Any, info: ValidationInfo) -> Any:
    """A list from JSON or from comma-separated items; empty text is the default."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return _default(info)
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"is not a valid JSON list ({exc})") from None
    if text.startswith("{"):
        raise ValueError("should be a list, not a JSON object")
    return [item.strip() for item in text.split(",") if item.strip()]


def _mapping_value(value: Any, info: ValidationInfo) -> Any:
    """A mapping from JSON; empty text is the default."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return _default(info)
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"is not a valid JSON object ({exc})") from None


# NoDecode: pydantic-settings would parse the variable as JSON itself and fail with a message
# naming neither the variable nor the expected form; the validators above parse it instead.
StrList = Annotated[list[str], NoDecode, BeforeValidator(_list_value)]
OptionalStrList = Annotated[list[str] | None, NoDecode, BeforeValidator(_list_value)]
FloatMapping = Annotated[dict[str, float], NoDecode, BeforeValidator(_mapping_value)]
StrMapping = Annotated[dict[str, str], NoDecode, BeforeValidator(_mapping_value)]


class CategoryRetention(BaseModel):
    """One category's own retention (``TIDINGS_HISTORY_CATEGORIES``)."""

    model_config = ConfigDict(extra="forbid")

    max: int | None = Field(None, gt=0)
    max_age: float | None = Field(None, gt=0)


RetentionMapping = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], CategoryRetention],
    NoDecode,
    BeforeValidator(_mapping_value),
]


class Settings(ProviderSettings):
    """Every knob of a tidings node.

    Each field can be set with the environment variable ``TIDINGS_<FIELD>``, e.g.
    ``TIDINGS_STORE=sqlite:///var/lib/tidings.db``.
    """

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore")

    # Backends
    store: str = Field("sqlite:///tidings.db", description="Store URL (sqlite:///path).")
    bus: str = Field("memory://", description="Bus URL (memory://[name]).")

    # Server
    host: str = Field("127.0.0.1", description="Interface `tidings serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port `tidings serve` listens on.")
    node_id: str = Field(default_factory=_default_node_id, description="This node's name.")
    public_url: str | None = Field(
        None, description="URL devices and services use to reach this node (shown in banners)."
    )

    ws_protocol: Literal["tidings", "websockets-sansio"] = Field(
        "tidings",
        description="WebSocket implementation of `tidings serve`: tidings' own lean transport "
        "(least memory per connection, fastest fan-out) or uvicorn's websockets-based one.",
    )
    ws_ping_interval: float = Field(
        20.0,
        gt=0,
        description="Seconds between WebSocket pings from `tidings serve`; a device that sent "
        "nothing between two pings is disconnected.",
    )

    fanout_coalesce_ms: float = Field(
        5.0,
        ge=0,
        le=100,
        description="While the node fans messages out to hundreds of sockets, frames wait this "
        "many milliseconds, or as long as the last fan-out's writes took (up to four times "
        "this), so that the next messages share their write (one system call per socket for "
        "several messages); 0 writes every turn of the event loop. A node that is not fanning "
        "out never waits.",
    )

    demo: bool = Field(
        False,
        description="Serve the demo inbox at /demo, with endpoints that mint device tokens and "
        "send notifications for anyone: for trying tidings out, never in production.",
    )

    # Cluster
    heartbeat_interval: float = Field(
        5.0, gt=0, description="Seconds between a node's heartbeats in the store."
    )
    node_timeout: float = Field(
        20.0, gt=0, description="A node silent this long is dead: others remove its sockets."
    )

    # Durable device queues (deliver mode)
    device_queue_max_length: int | None = Field(
        None, gt=0, description="Keep at most this many pending notifications per device."
    )
    device_queue_max_age: float | None = Field(
        None, gt=0, description="Drop pending notifications older than this many seconds."
    )

    # The inbox's history (retention)
    history_max: int | None = Field(
        None,
        gt=0,
        description="Keep at most this many notifications per user; older ones go, read or not.",
    )
    history_max_age: float | None = Field(
        None, gt=0, description="Remove notifications older than this many seconds."
    )
    history_categories: RetentionMapping = Field(
        default_factory=dict,
        description='Retention of categories that differ, JSON: {"marketing": {"max": 50, '
        '"max_age": 604800}}; a category listed follows only its own limits.',
    )

    # Topics
    topic_ttl: float = Field(21600, gt=0, description="Seconds topic messages are kept.")
    topic_ttls: FloatMapping = Field(
        default_factory=dict,
        description='TTL per topic pattern, JSON: {"chat:*": 86400}; first match wins.',
    )
    topic_patterns: OptionalStrList = Field(
        None, description="Public topic patterns, comma-separated or JSON (pet,news:*); unset: all."
    )
    topic_claim: str = Field("topics", description="Device JWT claim listing allowed topics.")
    max_topics_per_session: int = Field(1000, gt=0, description="Topics one session may follow.")
    session_ttl: float = Field(
        7 * 86400, gt=0, description="Subscriptions of a session idle this long are dropped."
    )
    max_sessions_per_user: int = Field(
        100,
        gt=0,
        description="Sessions whose topic subscriptions are kept per user; when a new one "
        "subscribes, the least recently active beyond this are dropped (a device coming back "
        "under one of them subscribes again).",
    )

    # Limits of a node
    max_batch_size: int = Field(
        1000, gt=0, le=10_000, description="Notifications per `POST /notify/batch` request."
    )
    max_batch_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest `POST /notify/batch` body, in bytes."
    )
    max_connections: int = Field(100_000, gt=0, description="Open sockets per node.")
    max_connections_per_user: int | None = Field(
        100,
        gt=0,
        description="Open sockets one user may hold across the cluster (null: no limit).",
    )
    max_frames_per_second: float = Field(
        50.0,
        gt=0,
        description="Frames a device may send per second (burst of two seconds' worth); "
        "more are answered `rate_limited`, and a device that keeps flooding is closed (1008).",
    )
    max_connects_per_second: float = Field(
        2000, gt=0, description="New sockets per second per node (burst of one second)."
    )
    max_open_connections: int = Field(
        0,
        ge=0,
        description="TCP connections of every kind (HTTP and WebSocket) a node holds open; "
        "past it a new one is answered 503 and closed. 0: the process's descriptor limit "
        "(`ulimit -n`) less a reserve of a hundredth (at least 256) for the store, the bus "
        "and the pipeline.",
    )
    head_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a client has to send a whole request head (each request of a "
        "kept-alive connection); then it is answered 408 and closed.",
    )
    keepalive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle kept-alive HTTP connection stays open."
    )

    # Device authentication
    jwt_secret: str | None = Field(
        None,
        description="HS256 secret for device JWTs. Unset: a random one is generated and kept "
        "in the store, so `tidings token` and every node sharing the store agree.",
    )
    jwt_audience: str | None = Field(None, description="Required `aud` of device JWTs.")
    jwt_issuer: str | None = Field(None, description="Required `iss` of device JWTs.")
    jwt_leeway: float = Field(30.0, ge=0, description="Clock skew tolerated, in seconds.")

    jwks_url: str | None = Field(
        None, description="JWKS of the identity provider signing device tokens (RS256/ES256)."
    )
    jwt_algorithms: StrList = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Asymmetric algorithms accepted with TIDINGS_JWKS_URL (RS256,ES256).",
    )

    # Delegated device authentication (separate service)
    delegate_url: str | None = Field(
        None, description="The application's subscribe URL that authenticates devices."
    )
    delegate_headers: StrList = Field(
        default_factory=list,
        description="Headers forwarded besides Cookie and Authorization (comma-separated).",
    )
    delegate_timeout: float = Field(2.0, gt=0, description="Seconds to wait for the app.")
    delegate_cache_ttl: float = Field(
        10.0, ge=0, description="Seconds an answer is reused for the same credentials."
    )
    allowed_origins: OptionalStrList = Field(
        None,
        description="Origins allowed to open device sockets (comma-separated; '*' allows any). "
        "Unset: any origin, except with delegated auth, where only the node's own host.",
    )

    # Service authentication
    service_token_ttl: int = Field(3600, gt=0, description="Lifetime of /oauth/token tokens.")
    service_token_key: str | None = Field(
        None,
        min_length=32,
        description="HS256 key signing /oauth/token tokens. Unset: generated and kept in the "
        "store (then whoever reads the database can mint service tokens).",
    )
    service_jwks_url: str | None = Field(
        None, description="JWKS of an external OAuth2 issuer of service tokens."
    )
    service_issuer: str | None = Field(None, description="Required `iss` of external tokens.")
    service_audience: str | None = Field(None, description="Required `aud` of external tokens.")
    service_algorithms: StrList = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Algorithms accepted from the external issuer (RS256,ES256).",
    )

    # Timeouts
    auth_timeout: float = Field(5.0, gt=0, description="Seconds to send `authenticate`.")

    # Limits
    max_frame_size: int = Field(65536, gt=0, description="Largest client frame, in bytes.")
    max_notification_size: int = Field(
        65536, gt=0, description="Largest notification `data`, in bytes of JSON."
    )
    outbound_queue_size: int = Field(
        1024, gt=0, description="Frames queued per connection before it is closed as too slow."
    )
    max_unseen_page: int = Field(1000, gt=0, description="Largest `getUnseen` limit.")
    max_unseen_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Bytes of notification data one `getUnseen` answer reads and carries, "
        "about (at least one notification is always sent); the rest comes with the next.",
    )

    # Operations
    shutdown_delay: float = Field(
        0.0,
        ge=0,
        description="Seconds between SIGTERM and closing anything: /ready answers 503 at once, "
        "so a load balancer stops sending traffic first (5 behind Kubernetes).",
    )
    shutdown_timeout: float = Field(
        10.0, gt=0, description="Seconds a stopping node waits for requests and sends to finish."
    )
    metrics_token: str | None = Field(
        None, description="If set, GET /metrics requires `Authorization: Bearer <token>`."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (for log collectors)."
    )

    # Pipeline (POST /messages): workers, tries, limits
    workers: int = Field(
        1, ge=0, description="Worker loops sending pipeline deliveries in this node (0: none)."
    )
    worker_concurrency: int = Field(
        16, gt=0, le=1000, description="Deliveries one worker loop sends at once."
    )
    pipeline_lease: float = Field(
        30.0,
        gt=0,
        description="Seconds a worker holds a claimed delivery without renewing it; past that "
        "the delivery is stale and queued again.",
    )
    pipeline_max_attempts: int = Field(8, gt=0, description="Tries per delivery before failed.")
    pipeline_retry_base: float = Field(
        2.0, gt=0, description="First retry waits up to this many seconds, doubling per try."
    )
    pipeline_retry_max: float = Field(600.0, gt=0, description="Longest wait between tries.")
    unsubscribe_ttl: float = Field(
        60 * 24 * 3600.0,
        gt=0,
        description="Seconds an email's one-click unsubscribe link works (needs "
        "TIDINGS_PUBLIC_URL; docs/pipeline.md).",
    )
    pipeline_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between a worker's looks at the queue when not woken."
    )
    max_recipients: int = Field(
        1000, gt=0, le=100_000, description="User ids one `POST /messages` may name."
    )
    max_topic_recipients: int = Field(
        100_000, gt=0, description="Subscribers a message to a topic may reach."
    )
    rate_limits: StrMapping = Field(
        default_factory=lambda: {"email": "20/hour", "sms": "10/hour", "web_push": "60/hour"},
        description='Deliveries per user per channel, JSON: {"email": "20/hour"}.',
    )

    # Pipeline providers
    smtp_url: str | None = Field(
        None, description="SMTP server for email: smtp://[user:pw@]host[:port][?starttls=true]."
    )
    email_from: str = Field("tidings@localhost", description="From address of emails.")
    webhook_secret: str | None = Field(
        None,
        description="Standard Webhooks signing secret (whsec_…). Unset: generated, kept in "
        "the store.",
    )
    vapid_private_key: str | None = Field(
        None, description="VAPID private key for web push. Unset: generated, kept in the store."
    )
    vapid_subject: str = Field(
        "mailto:admin@localhost", description="VAPID `sub` claim: a mailto: or https: URL."
    )
    sms_url: str | None = Field(None, description="The SMS provider's HTTP endpoint.")
    sms_token: str | None = Field(None, description="Bearer token for the SMS provider.")
    sms_from: str | None = Field(None, description="Sender id or number for SMS.")
    # Phones (APNs; docs/pipeline.md)
    apns_key_file: str | None = Field(
        None, description="APNs auth key (.p8) for provider tokens. Unset: no apns channel."
    )
    apns_key_id: str | None = Field(None, description="The APNs auth key's id (10 characters).")
    apns_team_id: str | None = Field(None, description="The Apple developer team id.")
    apns_topic: str | None = Field(None, description="The app's bundle id (`apns-topic`).")
    apns_url: str = Field(
        "https://api.push.apple.com",
        description="APNs host; https://api.sandbox.push.apple.com for development builds.",
    )
    fcm_credentials_file: str | None = Field(
        None, description="A Firebase service-account key file (JSON). Unset: no fcm channel."
    )
    fcm_url: str = Field("https://fcm.googleapis.com", description="The FCM HTTP v1 host.")
    expo_url: str = Field("https://exp.host", description="The Expo push service.")
    expo_access_token: str | None = Field(
        None, description="Expo access token, when the project enforces push security."
    )
    expo_receipt_delay: float = Field(
        900.0, gt=0, description="Seconds after an Expo send before its receipts are checked."
    )
    badge_sync_interval: float = Field(
        5.0,
        ge=0,
        description="Seconds between silent badge updates to one user's phones (0: none).",
    )
    push_ca_file: str | None = Field(
        None, description="Extra CA certificates (PEM) to trust for the push providers."
    )
    provider_timeout: float = Field(10.0, gt=0, description="Seconds per send to a provider.")
    allow_private_addresses: bool = Field(
        False,
        description="Let webhooks and push endpoints point to loopback or private networks "
        "(tests, closed networks); off, they are refused (SSRF).",
    )

    # Delivery-status webhooks (docs/pipeline.md); the URLs are checked after the line above
    status_webhook_urls: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_list_value)] = Field(
        (),
        description="Endpoints every change of a delivery is posted to, signed per "
        "Standard Webhooks (comma-separated or a JSON list).",
    )
    status_webhook_secret: str | None = Field(
        None, description="Their signing secret (whsec_…). Unset: the webhook channel's."
    )
    status_webhook_max_attempts: int = Field(
        20, gt=0, description="POSTs of one status event before it is given up (failed)."
    )
    status_webhook_max_age: float = Field(
        86400.0, gt=0, description="Seconds a status event is retried before it is given up."
    )
    status_webhook_retention: float = Field(
        7 * 86400.0, gt=0, description="Seconds delivered and failed status events are kept."
    )

    @field_validator("status_webhook_urls", "status_webhook_secret")
    @classmethod
    def _status_webhooks(cls, value: Any, info: ValidationInfo) -> Any:
        from tidings.delivery.status_types import check_status_secret, check_status_urls

        if info.field_name == "status_webhook_secret":
            return check_status_secret(value)
        private = bool(info.data.get("allow_private_addresses", False))
        return check_status_urls(value, allow_private=private) if value else value

    # Cookies
    cookie_secure: bool | None = Field(
        None, description="Mark the tidings_cid cookie Secure (default: when served over TLS)."
    )
    cookie_samesite: str = Field("Lax", description="SameSite attribute of tidings_cid.")
    cookie_max_age: int = Field(400 * 86400, gt=0, description="Max-Age of tidings_cid.")

    @field_validator("jwt_secret")
    @classmethod
    def _secret_length(cls, value: str | None) -> str | None:
        from tidings.core.limits import MIN_SECRET_LENGTH

        if not value:
            return None  # unset or empty: one is generated and kept in the store
        if len(value.encode()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"is {len(value.encode())} bytes; it needs at least {MIN_SECRET_LENGTH} "
                "(or leave it unset to have one generated and kept in the store)"
            )
        return value

    # The pipeline reads these two only once it starts; checked here too, so that a mistake is
    # named with its variable before anything starts. Imported late: config is imported first.
    @field_validator("rate_limits", "smtp_url")
    @classmethod
    def _pipeline(cls, value: Any, info: ValidationInfo) -> Any:
        from tidings.delivery.settings import check_rate_limits, check_smtp_url

        return (
            check_rate_limits(value) if info.field_name == "rate_limits" else check_smtp_url(value)
        )

    @field_validator("jwt_algorithms", "service_algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        # "none" would accept unsigned tokens; HS* with a public key is the classic confusion.
        refused = [a for a in value if a.lower() == "none" or a.upper().startswith("HS")]
        if refused:
            raise ValueError(f"not allowed with a JWKS: {', '.join(refused)}")
        return value

    @field_validator("cookie_samesite")
    @classmethod
    def _samesite(cls, value: str) -> str:
        normal = value.capitalize()
        if normal not in {"Lax", "Strict", "None"}:
            raise ValueError("must be Lax, Strict or None")
        return normal
