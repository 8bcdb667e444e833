"""A local fake of Apple Push Notification service (APNs) at the HTTP boundary.

Written from Apple's documentation ("Sending notification requests to APNs", "Establishing a
token-based connection to APNs", "Handling notification responses from APNs"), not from any
tidings code. It serves the provider API the way ``api.push.apple.com`` does: HTTP/2 over TLS
(ALPN ``h2`` only), ``POST /3/device/<device token>``, token-based (JWT, ES256) authentication,
the ``apns-*`` request headers, a JSON payload of at most 4 KB (5 KB for VoIP), and answers with
an ``apns-id`` header and, on errors, a JSON body ``{"reason": ...}`` (410 adds ``timestamp``).

Use it from a test::

    key_path, key_id, team_id = make_p8_key(tmp_path)
    with FakeApns.running(
        key_path, team_id=team_id, key_id=key_id, bundle_id="com.example.app"
    ) as apns:
        ...  # apns.url, apns.ca_path; apns.script(token, 410, "Unregistered"); apns.accepted

or ``async with FakeApns.running_async(...) as apns`` inside a test's event loop.

What the fake checks, in order: method (405 ``MethodNotAllowed``), path (404 ``BadPath``,
400 ``MissingDeviceToken``), repeated headers (400 ``DuplicateHeaders``), the provider token
(403 ``MissingProviderToken`` / ``InvalidProviderToken`` / ``ExpiredProviderToken``,
429 ``TooManyProviderTokenUpdates``), ``apns-topic`` (400 ``MissingTopic`` / ``BadTopic`` /
``TopicDisallowed``), ``apns-push-type`` (400 ``InvalidPushType``), ``apns-priority``
(400 ``BadPriority``), ``apns-id`` (400 ``BadMessageId``), ``apns-expiration``
(400 ``BadExpirationDate``), ``apns-collapse-id`` (400 ``BadCollapseId``), the device token
(400 ``BadDeviceToken``), the payload (400 ``PayloadEmpty`` / ``BadPayload``,
413 ``PayloadTooLarge``); then a scripted answer for the device token, if any; else 200.
The order in which the real service reports several faults at once is not documented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import string
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets

__all__ = [
    "ApnsRequest",
    "FakeApns",
    "ScriptedResponse",
    "TlsFiles",
    "make_p8_key",
    "make_tls_files",
]

# Scope/receive/send of ASGI, loosely typed (hypercorn ships no public ASGI types we rely on).
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# "For Voice over Internet Protocol (VoIP) notifications, the maximum payload size is 5 KB
# (5120 bytes). For all other remote notifications, the maximum payload size is 4 KB (4096
# bytes)." (Apple, "Sending notification requests to APNs").
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64  # bytes
TOKEN_MAX_AGE = 60 * 60  # "APNs rejects any request whose token contains a timestamp ... > 1 h"
TOKEN_UPDATE_INTERVAL = 20 * 60  # "... reports an error if you recreate your tokens more than
# once every 20 minutes" (429 TooManyProviderTokenUpdates, answered per connection)

# apns-push-type -> the topic suffix Apple requires on the bundle ID for that type.
PUSH_TYPE_TOPIC_SUFFIX: dict[str, str] = {
    "alert": "",
    "background": "",
    "location": ".location-query",
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "mdm": "",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
}
VALID_PRIORITIES = frozenset({"1", "5", "10"})

_DEVICE_PATH = "/3/device/"
_HEX = frozenset(string.hexdigits)
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# A bundle ID: reverse-DNS of letters, digits, '-' and '.', optionally with one of the suffixes.
_TOPIC_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# Headers the fake refuses to see twice (APNs: 400 DuplicateHeaders, "One or more headers are
# repeated").
_SINGLE_HEADERS = frozenset(
    {
        "authorization",
        "apns-id",
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
        "apns-collapse-id",
    }
)

_log = logging.getLogger("tests.fake_apns")


# --------------------------------------------------------------------------------------------
# Keys and certificates


def make_p8_key(
    directory: Path | str, *, team_id: str | None = None, key_id: str | None = None
) -> tuple[Path, str, str]:
    """Write a test APNs auth key (``AuthKey_<KEYID>.p8``: PKCS#8 PEM of an EC P-256 private
    key, as Apple's developer portal hands out) and return ``(path, key_id, team_id)``; the IDs
    are 10 upper-case alphanumerics like Apple's unless given."""
    alphabet = string.ascii_uppercase + string.digits
    key_id = key_id or "".join(secrets.choice(alphabet) for _ in range(10))
    team_id = team_id or "".join(secrets.choice(alphabet) for _ in range(10))
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = Path(directory) / f"AuthKey_{key_id}.p8"
    path.write_bytes(pem)
    return path, key_id, team_id


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed for
    ``localhost``/``127.0.0.1``."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def make_tls_files(directory: Path | str) -> TlsFiles:
    """Generate a CA and a ``localhost``/``127.0.0.1`` server certificate (EC P-256) in
    *directory*. The extensions are those a strict verifier (``VERIFY_X509_STRICT``) wants."""
    directory = Path(directory)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings test APNs CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server.key",
    )
    files.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _public_key(
    key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | Path | str | bytes,
) -> ec.EllipticCurvePublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        public = key
    else:
        pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        if b"PRIVATE KEY" in pem:
            loaded: Any = serialization.load_pem_private_key(pem, password=None)
            loaded = loaded.public_key()
        else:
            loaded = serialization.load_pem_public_key(pem)
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise TypeError("an APNs auth key is an EC P-256 key")
        public = loaded
    if not isinstance(public.curve, ec.SECP256R1):
        raise TypeError("an APNs auth key is an EC P-256 key")
    return public


# --------------------------------------------------------------------------------------------
# Records and scripts


@dataclass(frozen=True)
class ApnsRequest:
    """One request the fake answered (recorded whatever the answer)."""

    method: str
    path: str
    device_token: str
    # Lower-case header names (HTTP/2 has no others); a repeated header keeps its last value.
    headers: Mapping[str, str]
    body: bytes
    payload: Any  # the parsed JSON body, or None when it was not JSON
    jwt: str | None
    jwt_iat: int | None
    http_version: str  # "2" for HTTP/2 (ASGI spelling), "1.1" for a refused HTTP/1.1 request
    connection: str  # the client's "host:port", one per TCP (and so TLS) connection
    status: int
    reason: str | None
    apns_id: str | None
    received_at: float  # per the fake's clock

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class ScriptedResponse:
    """What the fake answers for a device token once a request passed every check."""

    status: int
    reason: str
    retry_after: int | None = None
    timestamp_ms: int | None = None  # for 410; None = "now" per the fake's clock
    remaining: int | None = None  # None: always


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class _TokenState:
    """The provider token last adopted on a connection (or for the team)."""

    jwt: str
    adopted_at: float


@dataclass
class _Runner:
    thread: threading.Thread | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    error: BaseException | None = None


# --------------------------------------------------------------------------------------------
# The fake


@dataclass(eq=False)
class FakeApns:
    """The fake service. Construct it with the test auth key (private or public key object,
    or a path to/PEM bytes of the .p8 or of a public key), the team ID and key ID the key
    belongs to, and the app's bundle ID; then run it with :meth:`running` (a thread) or
    :meth:`running_async` (a task in the current loop)."""

    key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | Path | str | bytes
    team_id: str
    key_id: str
    bundle_id: str
    # Refuse a new provider token within this many seconds of the last one adopted (None: never
    # refuse). "connection" counts per TLS connection, as Apple describes; "team" across them.
    token_update_interval: float | None = TOKEN_UPDATE_INTERVAL
    token_update_scope: Literal["connection", "team"] = "connection"
    token_max_age: float = TOKEN_MAX_AGE
    # An iat further in the future than this is refused as InvalidProviderToken (a client that
    # writes milliseconds); Apple does not document a tolerance.
    token_max_clock_skew: float = 60.0
    # Apple: push type "required for watchOS 6 and later; recommended for macOS, iOS, tvOS,
    # and iPadOS". The fake requires it by default, as a well-behaved provider always sends it.
    require_push_type: bool = True
    # The development environment adds an apns-unique-id header to responses.
    development: bool = False
    max_concurrent_streams: int = 1000
    clock: Callable[[], float] = time.time
    host: str = "127.0.0.1"

    port: int = field(init=False, default=0)
    tls: TlsFiles | None = field(init=False, default=None)
    _public_key: ec.EllipticCurvePublicKey = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _received: list[ApnsRequest] = field(init=False, repr=False, default_factory=list)
    _scripts: dict[str | None, list[ScriptedResponse]] = field(
        init=False, repr=False, default_factory=dict
    )
    _token_states: dict[str, _TokenState] = field(init=False, repr=False, default_factory=dict)
    _tempdir: tempfile.TemporaryDirectory[str] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._public_key = _public_key(self.key)

    # ----- addresses

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (set while the server runs)."""
        if not self.port:
            raise RuntimeError("the fake APNs is not running")
        return f"https://{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        """The PEM of the CA that signed the server certificate: trust it as a CA file."""
        if self.tls is None:
            raise RuntimeError("the fake APNs is not running")
        return self.tls.ca_path

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting :attr:`ca_path` (verification on, ALPN left to the
        client)."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    # ----- scripting

    def script(
        self,
        token: str | None,
        status: int,
        reason: str,
        *,
        retry_after: int | None = None,
        times: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Answer requests to *token* (None: to any token) that pass every check with *status*
        and ``{"reason": reason}`` — for the next *times* requests, or always when None.
        Scripts for a token queue up in order; a token's own scripts come before the any-token
        ones. ``retry_after`` adds a ``retry-after`` header (APNs does not document one; some
        providers' clients honour it); ``timestamp_ms`` sets a 410's ``timestamp``."""
        if status == 200:
            raise ValueError("script errors; a request that passes the checks answers 200")
        if times is not None and times < 1:
            raise ValueError("times is a positive count, or None for always")
        with self._lock:
            self._scripts.setdefault(token, []).append(
                ScriptedResponse(status, reason, retry_after, timestamp_ms, times)
            )

    def unregister(self, token: str, *, timestamp_ms: int | None = None) -> None:
        """From now on answer *token* 410 ``Unregistered`` (the app left the device)."""
        self.script(token, 410, "Unregistered", timestamp_ms=timestamp_ms)

    def unscript(self, token: str | None = None) -> None:
        """Forget the scripts of *token* (None: the any-token ones)."""
        with self._lock:
            self._scripts.pop(token, None)

    def _take_script(self, token: str) -> ScriptedResponse | None:
        with self._lock:
            for key in (token, None):
                queue = self._scripts.get(key)
                if not queue:
                    continue
                entry = queue[0]
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        queue.pop(0)
                return entry
        return None

    # ----- recording

    @property
    def received(self) -> list[ApnsRequest]:
        """Every request answered, in order of answer (a copy)."""
        with self._lock:
            return list(self._received)

    @property
    def accepted(self) -> list[ApnsRequest]:
        """The requests answered 200."""
        return [request for request in self.received if request.accepted]

    def accepted_for(self, token: str) -> list[ApnsRequest]:
        return [request for request in self.accepted if request.device_token == token]

    @property
    def connections(self) -> list[str]:
        """The distinct connections requests came on, in order of first request."""
        return list(dict.fromkeys(request.connection for request in self.received))

    def clear(self) -> None:
        """Forget recorded requests, scripts and provider-token history."""
        with self._lock:
            self._received.clear()
            self._scripts.clear()
            self._token_states.clear()

    def wait_for(self, predicate: Callable[[FakeApns], bool], timeout: float = 5.0) -> None:
        """Block until *predicate(self)* holds (for sync tests)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake APNs: condition not met in {timeout} s")
            time.sleep(0.01)

    async def wait_for_async(
        self, predicate: Callable[[FakeApns], bool], timeout: float = 5.0
    ) -> None:
        """Await until *predicate(self)* holds (for async tests)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake APNs: condition not met in {timeout} s")
            await asyncio.sleep(0.01)

    # ----- running

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | Path | str | bytes,
        **options: Any,
    ) -> Iterator[FakeApns]:
        """Run a fake on a free port in a background thread (its own event loop)."""
        fake = cls(key, **options)
        with fake.serving():
            yield fake

    @classmethod
    @contextlib.asynccontextmanager
    async def running_async(
        cls,
        key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | Path | str | bytes,
        **options: Any,
    ) -> AsyncIterator[FakeApns]:
        """Run a fake on a free port as a task of the running event loop."""
        fake = cls(key, **options)
        async with fake.serving_async():
            yield fake

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeApns]:
        """Serve this instance in a background thread for the duration of the block."""
        sock, config = self._prepare()
        runner = _Runner()
        started = threading.Event()

        def main() -> None:
            async def run() -> None:
                runner.loop = asyncio.get_running_loop()
                runner.stop = asyncio.Event()
                started.set()
                await self._serve(sock, config, runner.stop)

            try:
                asyncio.run(run())
            except BaseException as error:  # reported to the test on exit
                runner.error = error
                started.set()

        runner.thread = threading.Thread(target=main, name=f"fake-apns-{self.port}", daemon=True)
        runner.thread.start()
        try:
            started.wait(10)
            if runner.error is not None:
                raise RuntimeError("fake APNs failed to start") from runner.error
            yield self
        finally:
            if runner.loop is not None and runner.stop is not None and runner.error is None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    runner.loop.call_soon_threadsafe(runner.stop.set)
            runner.thread.join(15)
            self._finish()
            if runner.thread.is_alive():
                raise RuntimeError("fake APNs did not shut down")
            if runner.error is not None:
                raise RuntimeError("fake APNs server failed") from runner.error

    @contextlib.asynccontextmanager
    async def serving_async(self) -> AsyncIterator[FakeApns]:
        """Serve this instance as a task of the running loop for the duration of the block."""
        sock, config = self._prepare()
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._serve(sock, config, stop))
        try:
            await asyncio.sleep(0)
            yield self
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 15)
            finally:
                self._finish()

    def _prepare(self) -> tuple[_ListeningSocket, Config]:
        if self.port:
            raise RuntimeError("this fake APNs is already running")
        self._tempdir = tempfile.TemporaryDirectory(prefix="fake-apns-")
        self.tls = make_tls_files(self._tempdir.name)
        # Bound and listening before the server starts, so connections wait in the backlog.
        sock = _ListeningSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited on accept
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])

        config = _FakeConfig(sock)
        config.certfile = str(self.tls.cert_path)
        config.keyfile = str(self.tls.key_path)
        config.alpn_protocols = ["h2"]  # APNs speaks HTTP/2 only
        config.h2_max_concurrent_streams = self.max_concurrent_streams
        config.graceful_timeout = 2.0
        config.include_server_header = False
        config.accesslog = None
        config.errorlog = _log
        return sock, config

    def _finish(self) -> None:
        self.port = 0
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    async def _serve(self, sock: _ListeningSocket, config: Config, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        serving = loop.create_task(serve(cast(Any, self._app), config, shutdown_trigger=stop.wait))
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                # Hypercorn (asyncio.Server.wait_closed) waits for clients to hang up; a
                # provider keeps its connection open. Let requests in flight finish, then drop
                # the connections, as a server going away does.
                await asyncio.wait({serving}, timeout=0.25)
                sock.drop_connections()
            await serving
        finally:
            stopping.cancel()
            if not serving.done():
                serving.cancel()
            # asyncio's server closes the listening socket; close it if serve() never got there.
            if sock.fileno() != -1:
                sock.close()

    # ----- the ASGI application

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break

        client = scope.get("client") or ("?", 0)
        connection = f"{client[0]}:{client[1]}"
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw_headers
        }
        path: str = scope["path"]
        token = path[len(_DEVICE_PATH) :] if path.startswith(_DEVICE_PATH) else ""
        now = self.clock()
        request_id = headers.get("apns-id")
        apns_id = request_id if request_id and _UUID_RE.match(request_id) else str(uuid.uuid4())

        record: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "device_token": token,
            "headers": headers,
            "body": bytes(body),
            "payload": None,
            "jwt": None,
            "jwt_iat": None,
            "http_version": scope["http_version"],
            "connection": connection,
            "received_at": now,
        }

        if scope["http_version"] != "2":
            # ALPN offers only h2; a client that negotiated nothing and speaks HTTP/1.1 is
            # refused (the real service speaks only HTTP/2 on this port).
            self._record(record, 505, "HTTP/2 required", None)
            await _respond(send, 505, [(b"connection", b"close")], b'{"reason":"HTTP/2 required"}')
            return

        scripted: ScriptedResponse | None = None
        status: int
        reason: str | None
        try:
            self._check(scope, raw_headers, headers, token, bytes(body), now, connection, record)
            scripted = self._take_script(token)
        except _Reject as rejection:
            status, reason = rejection.status, rejection.reason
        else:
            status, reason = (scripted.status, scripted.reason) if scripted else (200, None)

        response_headers = [(b"apns-id", apns_id.encode())]
        if self.development:
            response_headers.append((b"apns-unique-id", str(uuid.uuid4()).encode()))
        self._record(record, status, reason, apns_id)
        if status == 200:
            await _respond(send, 200, response_headers, b"")
            return
        error: dict[str, Any] = {"reason": reason}
        if status == 410:
            # "timestamp: The time, in milliseconds since Epoch, at which APNs confirmed the
            # token was no longer valid for the topic. This key is included only when the
            # error in the :status field is 410."
            stamp = scripted.timestamp_ms if scripted is not None else None
            error["timestamp"] = stamp if stamp is not None else int(now * 1000)
        if scripted is not None and scripted.retry_after is not None:
            response_headers.append((b"retry-after", str(scripted.retry_after).encode()))
        response_headers.append((b"content-type", b"application/json"))
        await _respond(send, status, response_headers, json.dumps(error).encode())

    def _record(
        self, record: dict[str, Any], status: int, reason: str | None, apns_id: str | None
    ) -> None:
        entry = ApnsRequest(**record, status=status, reason=reason, apns_id=apns_id)
        with self._lock:
            self._received.append(entry)

    # ----- the checks

    def _check(
        self,
        scope: Scope,
        raw_headers: list[tuple[bytes, bytes]],
        headers: dict[str, str],
        token: str,
        body: bytes,
        now: float,
        connection: str,
        record: dict[str, Any],
    ) -> None:
        if scope["method"] != "POST":
            raise _Reject(405, "MethodNotAllowed")
        path: str = scope["path"]
        if not path.startswith(_DEVICE_PATH) or "/" in token:
            raise _Reject(404, "BadPath")
        if not token:
            raise _Reject(400, "MissingDeviceToken")

        seen: set[str] = set()
        for name, _ in raw_headers:
            lowered = name.decode("latin-1").lower()
            if lowered in _SINGLE_HEADERS and lowered in seen:
                raise _Reject(400, "DuplicateHeaders")
            seen.add(lowered)

        self._check_provider_token(headers.get("authorization"), now, connection, record)

        topic = headers.get("apns-topic")
        if topic is None or topic == "":
            raise _Reject(400, "MissingTopic")
        if not _TOPIC_RE.match(topic):
            raise _Reject(400, "BadTopic")

        push_type = headers.get("apns-push-type")
        if push_type is None:
            if self.require_push_type:
                raise _Reject(400, "InvalidPushType")
            push_type = "alert"
        if push_type not in PUSH_TYPE_TOPIC_SUFFIX:
            raise _Reject(400, "InvalidPushType")
        if topic != self.bundle_id + PUSH_TYPE_TOPIC_SUFFIX[push_type]:
            # Not this team's app (or not the topic this push type needs).
            raise _Reject(400, "TopicDisallowed")

        priority = headers.get("apns-priority")
        if priority is not None and priority not in VALID_PRIORITIES:
            raise _Reject(400, "BadPriority")
        # "background: ... Always use priority 5. Using priority 10 is an error." Omitting the
        # header means 10.
        if push_type == "background" and priority != "5":
            raise _Reject(400, "BadPriority")

        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID_RE.match(apns_id):
            raise _Reject(400, "BadMessageId")

        expiration = headers.get("apns-expiration")
        if expiration is not None and not (expiration.isascii() and expiration.isdigit()):
            raise _Reject(400, "BadExpirationDate")

        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode("latin-1")) > MAX_COLLAPSE_ID:
            raise _Reject(400, "BadCollapseId")

        # Device tokens are hex; Apple warns their length may change, so only evenness is
        # required of it.
        if len(token) % 2 or not set(token) <= _HEX:
            raise _Reject(400, "BadDeviceToken")

        limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
        if len(body) > limit:
            raise _Reject(413, "PayloadTooLarge")
        if not body.strip():
            raise _Reject(400, "PayloadEmpty")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise _Reject(400, "BadPayload") from None
        record["payload"] = payload
        if not isinstance(payload, dict):
            raise _Reject(400, "BadPayload")
        # Every notification's payload carries its "aps" dictionary (MDM pushes aside).
        if push_type != "mdm" and not isinstance(payload.get("aps"), dict):
            raise _Reject(400, "PayloadEmpty")

    def _check_provider_token(
        self, authorization: str | None, now: float, connection: str, record: dict[str, Any]
    ) -> None:
        if authorization is None:
            raise _Reject(403, "MissingProviderToken")
        scheme, _, jwt = authorization.strip().partition(" ")
        jwt = jwt.strip()
        if scheme.lower() != "bearer" or not jwt:
            raise _Reject(403, "MissingProviderToken")
        record["jwt"] = jwt
        try:
            header_b64, claims_b64, signature_b64 = jwt.split(".")
            header = json.loads(_b64url(header_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _Reject(403, "InvalidProviderToken") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _Reject(403, "InvalidProviderToken")
        raw_iat = claims.get("iat")
        iat = raw_iat if isinstance(raw_iat, int) and not isinstance(raw_iat, bool) else None
        record["jwt_iat"] = iat
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            raise _Reject(403, "InvalidProviderToken")
        if claims.get("iss") != self.team_id:
            raise _Reject(403, "InvalidProviderToken")
        if len(signature) != 64:  # JWS ES256: r || s, 32 bytes each
            raise _Reject(403, "InvalidProviderToken")
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._public_key.verify(
                der, f"{header_b64}.{claims_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, UnicodeEncodeError):
            raise _Reject(403, "InvalidProviderToken") from None
        if iat is None:  # "iat": seconds since Epoch, an integer
            raise _Reject(403, "InvalidProviderToken")
        if iat > now + self.token_max_clock_skew:
            raise _Reject(403, "InvalidProviderToken")
        if now - iat > self.token_max_age:
            raise _Reject(403, "ExpiredProviderToken")

        if self.token_update_interval is None:
            return
        scope_key = connection if self.token_update_scope == "connection" else self.team_id
        with self._lock:
            state = self._token_states.get(scope_key)
            if state is None:
                self._token_states[scope_key] = _TokenState(jwt, now)
            elif state.jwt != jwt:
                if now - state.adopted_at < self.token_update_interval:
                    raise _Reject(429, "TooManyProviderTokenUpdates")
                self._token_states[scope_key] = _TokenState(jwt, now)


class _ListeningSocket(socket.socket):
    """A listening socket that remembers the connections it accepted (asyncio accepts through
    ``sock.accept()``), so that shutting down can drop them."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.accepted: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        self.accepted.add(connection)
        return connection, address

    def drop_connections(self) -> None:
        for connection in list(self.accepted):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _FakeConfig(Config):
    """Hypercorn config serving on a socket bound beforehand (so the port is known)."""

    def __init__(self, sock: _ListeningSocket) -> None:
        super().__init__()
        self._sock = sock

    def create_sockets(self) -> Sockets:
        return Sockets(secure_sockets=[self._sock], insecure_sockets=[], quic_sockets=[])


def _b64url(segment: str) -> bytes:
    if not segment or "=" in segment:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
