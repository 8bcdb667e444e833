"""A fake Firebase Cloud Messaging (HTTP v1) with Google's service-account token endpoint.

Written from the providers' documentation, not from tidings code, so that a channel tested
against it is held to what Google checks:

* ``POST /token`` (the account's ``token_uri``): the OAuth 2.0 JWT bearer grant of RFC 7523 as
  Google's "Using OAuth 2.0 for Server to Server Applications" describes it. The form carries
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``, a JWT signed
  RS256 with the service account's private key whose header ``kid`` is the key's
  ``private_key_id`` and whose claims are ``iss`` (the account's ``client_email``), ``scope``
  (space-separated), ``aud`` (the ``token_uri``), ``iat`` and ``exp`` (at most an hour after
  ``iat``). A good assertion gets ``{"access_token", "expires_in", "token_type": "Bearer"}``; a
  bad one 400 ``{"error": "invalid_grant", "error_description": ...}``.
* ``POST /v1/projects/{project_id}/messages:send`` with ``Authorization: Bearer <token>``:
  ``{"message": {...}, "validate_only"?}`` answered ``{"name":
  "projects/{project_id}/messages/{id}"}``, or Google's error JSON ``{"error": {"code",
  "message", "status", "details": [...]}}`` carrying a ``google.firebase.fcm.v1.FcmError``
  ``errorCode`` where FCM's ErrorCode reference gives one.

Where Google's documentation says nothing exact, the fake picks the stricter plausible answer
and a comment at the check says so. Those points: a project the token's account does not
belong to gets 403 PERMISSION_DENIED (never 404, see ``_answer_send``); a token whose scopes
include neither ``firebase.messaging`` nor ``cloud-platform`` gets 403 PERMISSION_DENIED; an
assertion without a scope gets 400 ``invalid_scope``; ``iat``/``exp`` get ``clock_skew`` (300 s)
of leeway; the 4096-byte limit is counted over ``data`` keys and values plus ``notification``
strings; unknown ``message`` fields are refused (proto3 JSON parsing); the ``error.message``
texts are like Google's, not byte for byte.

Use::

    with FakeFcm() as fcm:                       # FakeFcm(tls=True) for HTTPS; fcm.ca_path
        path = fcm.account.write(tmp_path / "sa.json")
        fcm.fail("token-1", "UNREGISTERED")      # always
        fcm.fail("token-2", "QUOTA_EXCEEDED", times=1, retry_after=7)
        ...                                      # the code under test sends to fcm.url
        assert fcm.messages_to("token-3")[0]["notification"]["title"] == "Hi"

The server runs on its own event loop in a background thread, so it serves synchronous
fixtures and asynchronous tests alike. ``BackgroundServer`` and ``TlsFiles`` are shared with
``support.fake_expo``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeGuard

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from support.fake_apns import make_tls_files

Json = dict[str, Any]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Either scope authorizes messages:send (FCM's "Authorize send requests" lists both).
SEND_SCOPES = frozenset({FCM_SCOPE, CLOUD_PLATFORM_SCOPE})
MAX_ASSERTION_LIFETIME = 3600
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"

FcmErrorCode = Literal[
    "UNREGISTERED",
    "INVALID_ARGUMENT",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "SENDER_ID_MISMATCH",
    "THIRD_PARTY_AUTH_ERROR",
]

# FCM's ErrorCode reference: error code -> (HTTP status, canonical status, a message like Google's).
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for sending messages."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}

# Fields of the v1 Message resource; proto3 JSON takes both the lowerCamel and the proto name.
MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns"}
    | {"fcm_options", "fcmOptions", "token", "topic", "condition"}
)
NOTIFICATION_FIELDS = frozenset({"title", "body", "image"})
TARGETS = ("token", "topic", "condition")
# "Invalid data key": keys FCM uses itself (ErrorCode reference).
RESERVED_DATA_KEYS = frozenset({"from", "gcm", "message_type"})
# "4096 bytes for most messages ... This includes both the keys and the values."
MAX_PAYLOAD_BYTES = 4096
DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")


# ---------------------------------------------------------------------------------------------
# Shared plumbing: TLS files and a server on a background event loop.


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed for ``127.0.0.1`` and ``localhost``.

    Clients trust ``ca_path`` (``httpx.Client(verify=ssl.create_default_context(cafile=...))``).
    """

    directory: Path
    ca_path: Path
    cert_path: Path
    key_path: Path

    @classmethod
    def create(cls, directory: Path) -> TlsFiles:
        """The files of :func:`support.fake_apns.make_tls_files` (one CA maker for every
        fake), in ``directory``."""
        made = make_tls_files(directory)
        return cls(directory, made.ca_path, made.cert_path, made.key_path)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))


class BackgroundServer:
    """An aiohttp application on 127.0.0.1 (a free port), served from its own thread and loop.

    A sync context manager: entering starts it (``url`` is known from then on), leaving shuts
    it down cleanly (connections closed, loop closed, temporary TLS files removed). Subclasses
    add their routes in ``routes``. ``lock`` guards state that the handlers (loop thread) and
    the test (main thread) both touch.
    """

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        self.lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tls_files: TlsFiles | None = None
        self._port = 0

    # -- to override

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # -- lifecycle

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the fake server is not started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate (PEM) to trust, when serving TLS."""
        return self._tls_files.ca_path if self._tls_files else None

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting ``ca_path`` (for ``httpx.Client(verify=...)``)."""
        if self._tls_files is None:
            raise RuntimeError("the fake serves plain HTTP (construct it with tls=True)")
        return self._tls_files.client_context()

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        if self.tls:
            self._tls_files = TlsFiles.create(Path(tempfile.mkdtemp(prefix="tidings-fake-tls-")))
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            self._cleanup_files()
            raise RuntimeError("the fake server did not start") from self._error
        if not self._port:
            raise RuntimeError("the fake server did not start in 30 s")
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._thread = None
        self._cleanup_files()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cleanup_files(self) -> None:
        if self._tls_files is not None:
            shutil.rmtree(self._tls_files.directory, ignore_errors=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as error:
            self._error = error
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        context = self._tls_files.server_context() if self._tls_files else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        address = self._runner.addresses[0]
        self._port = int(address[1])


# ---------------------------------------------------------------------------------------------
# Service accounts.


@dataclass
class ServiceAccount:
    """A service account key as the Google Cloud console downloads it (JSON key file)."""

    project_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str
    private_key_id: str = field(default_factory=lambda: secrets.token_hex(20))
    client_id: str = field(default_factory=lambda: str(secrets.randbelow(10**21)).zfill(21))
    client_email: str = ""

    def __post_init__(self) -> None:
        if not self.client_email:
            self.client_email = (
                f"firebase-adminsdk-{secrets.token_hex(3)}@{self.project_id}"
                ".iam.gserviceaccount.com"
            )

    @classmethod
    def generate(cls, project_id: str, token_uri: str) -> ServiceAccount:
        """A fresh account with an RSA 2048 key."""
        return cls(
            project_id=project_id,
            private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
            token_uri=token_uri,
        )

    @property
    def private_key_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def info(self) -> Json:
        """The key file's fields (those of a real ``service_account`` key file)."""
        email = self.client_email
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                "https://www.googleapis.com/robot/v1/metadata/x509/" + email.replace("@", "%40")
            ),
            "universe_domain": "googleapis.com",
        }

    def write(self, path: Path) -> Path:
        """Write the key file (mode 0600) and return its path."""
        path.write_text(json.dumps(self.info(), indent=2))
        path.chmod(0o600)
        return path


# ---------------------------------------------------------------------------------------------
# Records and scripts.


@dataclass
class IssuedToken:
    access_token: str
    client_email: str
    project_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class SendAttempt:
    """One request to messages:send, whatever its answer."""

    project_id: str
    body: Any
    status: int
    response: Json
    target: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class AcceptedMessage:
    project_id: str
    name: str
    message: Json
    client_email: str


@dataclass
class _Failure:
    code: str
    remaining: int | None  # None: always
    retry_after: int | None


class FakeFcm(BackgroundServer):
    """Google's token endpoint and FCM HTTP v1 ``messages:send`` for one or more projects.

    ``account`` is the default service account (project ``project_id``); ``add_account`` makes
    more (a second project, or a second key for the same one). Attributes for the code under
    test: ``url`` (the FCM endpoint base, in place of ``https://fcm.googleapis.com``) and
    ``token_uri`` (in place of ``https://oauth2.googleapis.com/token``, also in the key file).
    """

    def __init__(
        self,
        project_id: str = "tidings-test",
        *,
        tls: bool = False,
        expires_in: int = 3600,
        clock_skew: int = 300,
    ) -> None:
        super().__init__(tls=tls)
        self.project_id = project_id
        self.expires_in = expires_in
        self.clock_skew = clock_skew
        self._offset = 0.0
        self._default_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._accounts: dict[str, ServiceAccount] = {}  # by client_email
        self._tokens: dict[str, IssuedToken] = {}
        self._failures: dict[str | None, list[_Failure]] = {}
        self.tokens_issued = 0
        self.token_requests: list[Json] = []  # every token request: form and answer status
        self.attempts: list[SendAttempt] = []
        self.messages: list[AcceptedMessage] = []
        self._account: ServiceAccount | None = None

    # -- configuration

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def account(self) -> ServiceAccount:
        """The default account; its key file's ``token_uri`` points at this fake."""
        if self._account is None:
            raise RuntimeError("the fake is not started (the account's token_uri has its port)")
        return self._account

    def start(self) -> Self:
        super().start()
        if self._account is None:
            self._account = ServiceAccount(
                project_id=self.project_id,
                private_key=self._default_key,
                token_uri=self.token_uri,
            )
        with self.lock:
            self._accounts[self._account.client_email] = self._account
        return self

    def add_account(self, project_id: str | None = None) -> ServiceAccount:
        account = ServiceAccount.generate(project_id or self.project_id, self.token_uri)
        with self.lock:
            self._accounts[account.client_email] = account
        return account

    def delete_key(self, account: ServiceAccount) -> None:
        """The key is deleted in the console: its assertions no longer verify."""
        with self.lock:
            self._accounts.pop(account.client_email, None)

    def now(self) -> float:
        """The fake's clock: wall time plus ``advance``'s offset."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (access tokens expire, assertions age)."""
        with self.lock:
            self._offset += seconds

    def revoke_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def fail(
        self,
        token: str | None,
        code: FcmErrorCode,
        *,
        times: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer sends to registration ``token`` (``None``: to any target) with FCM error
        ``code``: for the next ``times`` sends, or always when ``times`` is None. Scripts for
        one token queue up in order; ``retry_after`` (seconds) sets a ``Retry-After`` header."""
        if code not in FCM_ERRORS:
            raise ValueError(f"unknown FCM error code {code!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        with self.lock:
            self._failures.setdefault(token, []).append(_Failure(code, times, retry_after))

    def unregister(self, token: str) -> None:
        """The app instance is gone: every send to ``token`` gets 404 UNREGISTERED."""
        self.fail(token, "UNREGISTERED")

    def clear(self, token: str | None = None) -> None:
        with self.lock:
            self._failures.pop(token, None)

    # -- records

    def messages_to(self, token: str) -> list[Json]:
        with self.lock:
            return [m.message for m in self.messages if m.message.get("token") == token]

    def attempts_to(self, token: str) -> list[SendAttempt]:
        with self.lock:
            return [a for a in self.attempts if a.target == token]

    def live_tokens(self) -> list[IssuedToken]:
        now = self.now()
        with self.lock:
            return [t for t in self._tokens.values() if t.expires_at > now]

    # -- server

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project_id}/messages:send", self._send)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        status, body = self._grant(fields)
        with self.lock:
            self.token_requests.append({"form": fields, "status": status, "response": body})
        return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})

    def _grant(self, form: Mapping[str, str]) -> tuple[int, Json]:
        grant_type = form.get("grant_type")
        if grant_type != JWT_BEARER:
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": f"Invalid grant_type: {grant_type or ''}",
            }
        assertion = form.get("assertion")
        if not assertion:
            return 400, {"error": "invalid_request", "error_description": "Missing assertion."}
        try:
            header, claims, signed, signature = _split_jwt(assertion)
        except ValueError:
            return _invalid_grant("Invalid JWT: malformed.")
        if header.get("alg") != "RS256":
            return _invalid_grant("Invalid JWT: the algorithm must be RS256.")
        with self.lock:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            return _invalid_grant("Invalid grant: account not found")
        if header.get("kid") != account.private_key_id:
            return _invalid_grant("Invalid JWT Signature.")
        try:
            account.private_key.public_key().verify(
                signature, signed, padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return _invalid_grant("Invalid JWT Signature.")
        if claims.get("aud") != account.token_uri:
            return _invalid_grant("Invalid JWT: Failed audience check.")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_number(iat) or not _is_number(exp):
            return _invalid_grant("Invalid JWT: iat and exp are required numbers.")
        now = self.now()
        if (
            exp <= iat
            or exp - iat > MAX_ASSERTION_LIFETIME
            or iat > now + self.clock_skew
            or exp < now - self.clock_skew
        ):
            return _invalid_grant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a"
                " reasonable timeframe. Check your iat and exp values in the JWT claim."
            )
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.split():
            return 400, {
                "error": "invalid_scope",
                "error_description": "Invalid oauth scope or ID token audience provided.",
            }
        issued = IssuedToken(
            access_token="ya29.fake-" + secrets.token_urlsafe(32),
            client_email=account.client_email,
            project_id=account.project_id,
            scopes=frozenset(scope.split()),
            expires_at=now + self.expires_in,
        )
        with self.lock:
            self._tokens[issued.access_token] = issued
            self.tokens_issued += 1
        return 200, {
            "access_token": issued.access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }

    async def _send(self, request: web.Request) -> web.Response:
        project_id = request.match_info["project_id"]
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        status, response, target, headers = self._answer_send(
            project_id, request.headers.get("Authorization"), body
        )
        with self.lock:
            self.attempts.append(
                SendAttempt(project_id, body, status, response, target, dict(request.headers))
            )
        return web.json_response(response, status=status, headers=headers)

    def _answer_send(
        self, project_id: str, authorization: str | None, body: Any
    ) -> tuple[int, Json, str | None, dict[str, str]]:
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return (
                401,
                _google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request is missing required authentication credential. Expected OAuth 2"
                    " access token, login cookie or other valid authentication credential.",
                ),
                None,
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        with self.lock:
            issued = self._tokens.get(credential.strip())
        if issued is None or issued.expires_at <= self.now():
            return (
                401,
                _google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access"
                    " token, login cookie or other valid authentication credential.",
                ),
                None,
                {
                    "WWW-Authenticate": (
                        'Bearer realm="https://accounts.google.com/", error="invalid_token"'
                    )
                },
            )
        # Unverified: Google's usual answer to a token lacking the scope.
        if not issued.scopes & SEND_SCOPES:
            return (
                403,
                _google_error(
                    403, "PERMISSION_DENIED", "Request had insufficient authentication scopes."
                ),
                None,
                {},
            )
        # Wrong project. Google's IAM answers a project the caller may not use, and one that
        # does not exist, alike: 403 PERMISSION_DENIED "... (or it may not exist)". The fake does
        # the same (never 404), so a channel must not take this for an unregistered token.
        if issued.project_id != project_id:
            return (
                403,
                _google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Permission 'cloudmessaging.messages.create' denied on resource"
                    f" '//cloudresourcemanager.googleapis.com/projects/{project_id}'"
                    " (or it may not exist).",
                ),
                None,
                {},
            )
        if not isinstance(body, dict):
            return 400, _invalid_payload("Invalid JSON payload received."), None, {}
        problem = _check_send_body(body)
        message = body.get("message")
        target = message.get("token") if isinstance(message, dict) else None
        target = target if isinstance(target, str) else None
        if problem is not None:
            return 400, problem, target, {}
        assert isinstance(message, dict)
        failure = self._take_failure(target)
        if failure is not None:
            status, canonical, text = FCM_ERRORS[failure.code]
            details: list[Json] = [{"@type": FCM_ERROR_TYPE, "errorCode": failure.code}]
            if failure.code == "INVALID_ARGUMENT":
                details.append(_field_violation("message.token", "Invalid registration token"))
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = str(failure.retry_after)
            return status, _google_error(status, canonical, text, details), target, headers
        if body.get("validate_only") is True:
            return 200, {"name": f"projects/{project_id}/messages/fake_message_id"}, target, {}
        name = f"projects/{project_id}/messages/{uuid.uuid4().int >> 64}"
        with self.lock:
            self.messages.append(AcceptedMessage(project_id, name, message, issued.client_email))
        return 200, {"name": name}, target, {}

    def _take_failure(self, target: str | None) -> _Failure | None:
        """The first script for ``target``, else the first for any target; spends one use."""
        with self.lock:
            for key in dict.fromkeys((target, None)):
                queue = self._failures.get(key)
                if queue:
                    failure = queue[0]
                    if failure.remaining is not None:
                        failure.remaining -= 1
                        if failure.remaining == 0:
                            queue.pop(0)
                    return failure
        return None


# ---------------------------------------------------------------------------------------------
# Checks.


def _split_jwt(assertion: str) -> tuple[Json, Json, bytes, bytes]:
    parts = assertion.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWS compact serialization")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise ValueError("undecodable") from error
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("header and claims must be objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid_grant(description: str) -> tuple[int, Json]:
    return 400, {"error": "invalid_grant", "error_description": description}


def _google_error(code: int, status: str, message: str, details: list[Json] | None = None) -> Json:
    error: Json = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def _field_violation(path: str, description: str) -> Json:
    return {
        "@type": BAD_REQUEST_TYPE,
        "fieldViolations": [{"field": path, "description": description}],
    }


def _invalid_payload(message: str, path: str | None = None) -> Json:
    details = [_field_violation(path, message)] if path else None
    return _google_error(400, "INVALID_ARGUMENT", message, details)


def _invalid_message(message: str, path: str) -> Json:
    """A bad Message: INVALID_ARGUMENT with both detail types, as FCM sends them."""
    return _google_error(
        400,
        "INVALID_ARGUMENT",
        message,
        [
            _field_violation(path, message),
            {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
        ],
    )


def _string_map(value: object, path: str) -> Json | None:
    """A ``map<string, string>`` field: an object whose values are all strings."""
    if not isinstance(value, dict):
        return _invalid_payload(f"Invalid value at '{path}' (type.googleapis.com/Map)", path)
    for index, item in enumerate(value.values()):
        if not isinstance(item, str):
            where = f"{path}[{index}].value"
            return _invalid_payload(
                f"Invalid value at '{where}' (TYPE_STRING), {json.dumps(item)}", where
            )
    return None


def _check_send_body(body: Json) -> Json | None:
    for key in body:
        if key not in ("message", "validate_only", "validateOnly"):
            return _invalid_payload(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.', key
            )
    message = body.get("message")
    if not isinstance(message, dict):
        return _invalid_payload("Invalid JSON payload received. 'message' is required.", "message")
    for key in message:
        if key not in MESSAGE_FIELDS:
            return _invalid_payload(
                f"Invalid JSON payload received. Unknown name \"{key}\" at 'message':"
                " Cannot find field.",
                f"message.{key}",
            )
    targets = [t for t in TARGETS if t in message]
    if not targets:
        return _invalid_message("Recipient of the message is not set.", "message")
    if len(targets) > 1:
        return _invalid_payload(
            "Invalid JSON payload received. Oneof field 'target' is already set."
            f" Cannot set '{targets[1]}'",
            f"message.{targets[1]}",
        )
    target = targets[0]
    if not isinstance(message[target], str) or not message[target].strip():
        if target == "token":
            return _google_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                [{"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"}],
            )
        return _invalid_message(f"Invalid value at 'message.{target}'", f"message.{target}")
    size = 0
    if "data" in message:
        problem = _string_map(message["data"], "message.data")
        if problem is not None:
            return problem
        for key, value in message["data"].items():
            if key in RESERVED_DATA_KEYS or key.startswith("google"):
                return _invalid_message(f"Invalid data payload key: {key}", "message.data")
            size += len(key.encode()) + len(value.encode())
    notification = message.get("notification")
    if notification is not None:
        if not isinstance(notification, dict):
            return _invalid_payload(
                "Invalid value at 'message.notification'", "message.notification"
            )
        for key, value in notification.items():
            if key not in NOTIFICATION_FIELDS:
                return _invalid_payload(
                    f'Invalid JSON payload received. Unknown name "{key}" at'
                    " 'message.notification': Cannot find field.",
                    f"message.notification.{key}",
                )
            if not isinstance(value, str):
                where = f"message.notification.{key}"
                return _invalid_payload(f"Invalid value at '{where}' (TYPE_STRING)", where)
            size += len(value.encode())
    for platform in ("android", "apns", "webpush"):
        if platform in message and not isinstance(message[platform], dict):
            return _invalid_payload(f"Invalid value at 'message.{platform}'", f"message.{platform}")
    android = message.get("android") or {}
    if "data" in android:
        problem = _string_map(android["data"], "message.android.data")
        if problem is not None:
            return problem
    ttl = android.get("ttl", "0s")
    if not (isinstance(ttl, str) and DURATION.match(ttl)):
        return _invalid_payload(
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
            "message.android.ttl",
        )
    if "priority" in android and android["priority"] not in ("NORMAL", "HIGH", "normal", "high"):
        return _invalid_payload(
            "Invalid value at 'message.android.priority'", "message.android.priority"
        )
    apns = message.get("apns") or {}
    if "headers" in apns:
        problem = _string_map(apns["headers"], "message.apns.headers")
        if problem is not None:
            return problem
    if "payload" in apns and not isinstance(apns["payload"], dict):
        return _invalid_payload("Invalid value at 'message.apns.payload'", "message.apns.payload")
    webpush = message.get("webpush") or {}
    for key in ("headers", "data"):
        if key in webpush:
            problem = _string_map(webpush[key], f"message.webpush.{key}")
            if problem is not None:
                return problem
    if size > MAX_PAYLOAD_BYTES:
        return _invalid_message(
            f"Message is too big: {size} bytes of payload, at most {MAX_PAYLOAD_BYTES}.",
            "message",
        )
    return None
