"""A fake Expo push service (``exp.host``): push tickets, then push receipts.

Written from Expo's "Send notifications with the Expo Push Service" guide, not from tidings
code:

* ``POST /--/api/v2/push/send``: a JSON message or a list of them (a message's ``to`` is an Expo
  push token, ``ExponentPushToken[...]``, or a list of them; at most 100 notifications a
  request). The answer is ``{"data": [ticket, ...]}``, one ticket a recipient in order: ``{"status":
  "ok", "id": <receipt id>}`` or ``{"status": "error", "message", "details": {"error":
  "DeviceNotRegistered" | "MessageTooBig" | "MessageRateExceeded" | "InvalidCredentials", ...}}``.
  A request that fails as a whole gets a 4xx/5xx and ``{"errors": [{"code", "message"}]}``.
* ``POST /--/api/v2/push/getReceipts`` with ``{"ids": [...]}`` (at most 1,000): ``{"data": {id:
  receipt}}``; ids whose receipt is not ready yet (or unknown) are left out.
* With "enhanced push security" on (``FakeExpo(access_token=...)``), both need ``Authorization:
  Bearer <access token>``.

Use::

    with FakeExpo() as expo:                 # FakeExpo(tls=True); expo.ca_path
        expo.ticket_error(TOKEN_A, "DeviceNotRegistered")
        expo.receipt_error(TOKEN_B, "DeviceNotRegistered")   # ticket ok, receipt says gone
        expo.fail_requests(429, times=2, retry_after=3)
        ...                                  # the code under test posts to expo.send_url
        assert expo.messages_to(TOKEN_C)[0]["title"] == "Hi"

Points the guide does not pin down, and what the fake does about them (stricter where unsure):
the answer to a single message object is a single ticket (a list body always gets a list); a
malformed field is a 400 ``VALIDATION_ERROR``; a ``to`` that is not an Expo push token gets a
DeviceNotRegistered ticket; a bad or missing access token is a 401 ``UNAUTHORIZED``; the 4096
bytes are counted over the message's JSON without ``to``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from aiohttp import web

from support.fake_fcm import BackgroundServer

Json = dict[str, Any]

SEND_PATH = "/--/api/v2/push/send"
RECEIPTS_PATH = "/--/api/v2/push/getReceipts"
MAX_MESSAGES = 100
MAX_RECEIPT_IDS = 1000
MAX_PAYLOAD_BYTES = 4096
TOKEN_PATTERN = re.compile(r"^(?:ExponentPushToken|ExpoPushToken)\[[^\[\]\s]+\]$")
DEFAULT_EXPERIENCE = "@tidings/test-app"

TicketError = Literal[
    "DeviceNotRegistered", "MessageTooBig", "MessageRateExceeded", "InvalidCredentials"
]
ReceiptError = Literal[
    "DeviceNotRegistered", "MessageTooBig", "MessageRateExceeded", "InvalidCredentials"
]

ERROR_MESSAGES: dict[str, str] = {
    "DeviceNotRegistered": "{token} is not a registered push notification recipient",
    "MessageTooBig": "Message too big: the total notification payload must be at most 4096 bytes.",
    "MessageRateExceeded": "Too many messages sent to {token}; slow down.",
    "InvalidCredentials": "Could not find or use the push credentials for this project.",
}
RECEIPT_MESSAGES: dict[str, str] = {
    "DeviceNotRegistered": (
        "The device cannot receive push notifications anymore and you should stop sending"
        " messages to the corresponding Expo push token."
    ),
    "MessageTooBig": "The notification payload was too large.",
    "MessageRateExceeded": "Too many messages were sent to the device; back off.",
    "InvalidCredentials": "The push credentials of this project are invalid.",
}
HTTP_ERROR_CODES: dict[int, str] = {
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

# Message fields and their JSON types (the guide's "Message request format").
STRING_FIELDS = ("title", "body", "subtitle", "channelId", "categoryId", "interruptionLevel")
NUMBER_FIELDS = ("ttl", "expiration", "badge")
PRIORITIES = ("default", "normal", "high")


@dataclass
class ExpoRequest:
    """One request to either endpoint, whatever its answer."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int
    response: Json


@dataclass
class ExpoMessage:
    """An accepted notification (one recipient: ``message["to"]`` is that one token)."""

    token: str
    message: Json
    ticket_id: str


@dataclass
class Receipt:
    token: str
    error: str | None = None
    ready: bool = True

    def as_json(self) -> Json:
        if self.error is None:
            return {"status": "ok"}
        return {
            "status": "error",
            "message": RECEIPT_MESSAGES[self.error],
            "details": {"error": self.error},
        }


@dataclass
class _Script:
    error: str
    remaining: int | None  # None: always


@dataclass
class _HttpFailure:
    status: int
    remaining: int | None
    retry_after: int | None
    token: str | None
    path: str | None


@dataclass
class _Outcome:
    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


class FakeExpo(BackgroundServer):
    """Expo's push API. ``url`` replaces ``https://exp.host``; ``send_url`` and
    ``receipts_url`` are the two endpoints."""

    def __init__(self, *, tls: bool = False, access_token: str | None = None) -> None:
        super().__init__(tls=tls)
        self.access_token = access_token
        self._ticket_scripts: dict[str, list[_Script]] = {}
        self._receipt_scripts: dict[str, list[_Script]] = {}
        self._http_failures: list[_HttpFailure] = []
        self._experiences: dict[str, str] = {}
        self._hold_receipts = False
        self.receipts: dict[str, Receipt] = {}
        self.requests: list[ExpoRequest] = []
        self.messages: list[ExpoMessage] = []

    @property
    def send_url(self) -> str:
        return self.url + SEND_PATH

    @property
    def receipts_url(self) -> str:
        return self.url + RECEIPTS_PATH

    # -- scripting

    def ticket_error(self, token: str, error: TicketError, *, times: int | None = None) -> None:
        """The next ``times`` notifications to ``token`` (always when None) get an error
        ticket (no receipt id). Scripts for one token queue up in order."""
        _check_times(times)
        with self.lock:
            self._ticket_scripts.setdefault(token, []).append(_Script(error, times))

    def receipt_error(self, token: str, error: ReceiptError, *, times: int | None = None) -> None:
        """The next ``times`` notifications to ``token`` get an ok ticket whose receipt later
        says ``error`` (APNs or FCM refused it after Expo queued it)."""
        _check_times(times)
        with self.lock:
            self._receipt_scripts.setdefault(token, []).append(_Script(error, times))

    def fail_requests(
        self,
        status: int,
        *,
        times: int | None = 1,
        retry_after: int | None = None,
        token: str | None = None,
        endpoint: Literal["send", "receipts"] | None = "send",
    ) -> None:
        """The next ``times`` requests (always when None) to ``endpoint`` (either when None)
        fail as a whole with HTTP ``status`` (429 or 5xx) and Expo's ``errors`` body; with
        ``token``, only requests that carry a notification to it. ``retry_after`` (seconds)
        sets ``Retry-After``."""
        _check_times(times)
        path = {"send": SEND_PATH, "receipts": RECEIPTS_PATH, None: None}[endpoint]
        with self.lock:
            self._http_failures.append(_HttpFailure(status, times, retry_after, token, path))

    def assign_project(self, token: str, experience_id: str) -> None:
        """Make ``token`` belong to another Expo project (all others: ``DEFAULT_EXPERIENCE``);
        a request mixing projects is refused with PUSH_TOO_MANY_EXPERIENCE_IDS."""
        with self.lock:
            self._experiences[token] = experience_id

    def hold_receipts(self, hold: bool = True) -> None:
        """While held, new tickets' receipts are not ready (getReceipts leaves them out)."""
        with self.lock:
            self._hold_receipts = hold
            if not hold:
                for receipt in self.receipts.values():
                    receipt.ready = True

    def clear(self) -> None:
        with self.lock:
            self._ticket_scripts.clear()
            self._receipt_scripts.clear()
            self._http_failures.clear()

    # -- records

    def messages_to(self, token: str) -> list[Json]:
        with self.lock:
            return [m.message for m in self.messages if m.token == token]

    def requests_to(self, endpoint: Literal["send", "receipts"]) -> list[ExpoRequest]:
        path = SEND_PATH if endpoint == "send" else RECEIPTS_PATH
        with self.lock:
            return [r for r in self.requests if r.path == path]

    # -- server

    def routes(self, app: web.Application) -> None:
        app.router.add_post(SEND_PATH, self._handle)
        app.router.add_post(RECEIPTS_PATH, self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp undoes Content-Encoding: gzip / deflate
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = _UNPARSABLE
        with self.lock:
            outcome = self._answer(request.path, request.headers.get("Authorization"), body)
            self.requests.append(
                ExpoRequest(
                    request.path,
                    dict(request.headers),
                    None if body is _UNPARSABLE else body,
                    outcome.status,
                    outcome.body,
                )
            )
        return web.json_response(outcome.body, status=outcome.status, headers=outcome.headers)

    def _answer(self, path: str, authorization: str | None, body: Any) -> _Outcome:
        if self.access_token is not None:
            scheme, _, credential = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or credential.strip() != self.access_token:
                return _request_error(
                    401,
                    "UNAUTHORIZED",
                    "The bearer token is invalid or missing; this project requires an access"
                    " token (enhanced push security).",
                )
        if body is _UNPARSABLE:
            return _request_error(400, "VALIDATION_ERROR", "The request body must be JSON.")
        if path == SEND_PATH:
            return self._send(body)
        return self._get_receipts(body)

    def _take_http_failure(self, path: str, tokens: list[str]) -> _Outcome | None:
        for failure in self._http_failures:
            if failure.path not in (None, path):
                continue
            if failure.token is not None and failure.token not in tokens:
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining == 0:
                    self._http_failures.remove(failure)
            outcome = _request_error(
                failure.status,
                HTTP_ERROR_CODES.get(failure.status, "SERVER_ERROR"),
                "The Expo push service is unavailable; retry with exponential backoff.",
                transient=True,
            )
            if failure.retry_after is not None:
                outcome.headers["Retry-After"] = str(failure.retry_after)
            return outcome
        return None

    def _send(self, body: Any) -> _Outcome:
        single = isinstance(body, dict)
        messages = [body] if single else body
        if not isinstance(messages, list) or not messages:
            return _request_error(
                400,
                "VALIDATION_ERROR",
                '"value" must be a push message object or a non-empty array of them.',
            )
        recipients: list[tuple[str, Json]] = []
        for index, message in enumerate(messages):
            where = "" if single else f"[{index}]."
            problem = _check_message(message, where)
            if problem is not None:
                return problem
            to = message["to"]
            for token in [to] if isinstance(to, str) else to:
                recipients.append((token, {**message, "to": token}))
        if len(recipients) > MAX_MESSAGES:
            return _request_error(
                400,
                "PUSH_TOO_MANY_NOTIFICATIONS",
                f"You are trying to send more than {MAX_MESSAGES} push notifications in one"
                f" request ({len(recipients)}).",
            )
        tokens = [token for token, _ in recipients]
        failure = self._take_http_failure(SEND_PATH, tokens)
        if failure is not None:
            return failure
        projects: dict[str, list[str]] = {}
        for token in tokens:
            if TOKEN_PATTERN.match(token):
                experience = self._experiences.get(token, DEFAULT_EXPERIENCE)
                projects.setdefault(experience, []).append(token)
        if len(projects) > 1:
            outcome = _request_error(
                400,
                "PUSH_TOO_MANY_EXPERIENCE_IDS",
                "All push notification messages in the same request must be for the same"
                " project; separate your push notifications by project.",
            )
            outcome.body["errors"][0]["details"] = projects
            return outcome
        tickets = [self._ticket(token, message) for token, message in recipients]
        data: Any = tickets[0] if single and isinstance(body["to"], str) else tickets
        return _Outcome(200, {"data": data})

    def _ticket(self, token: str, message: Json) -> Json:
        if not TOKEN_PATTERN.match(token):
            return _error_ticket(
                token, "DeviceNotRegistered", f"{json.dumps(token)} is not a valid Expo push token"
            )
        error = _take(self._ticket_scripts, token)
        if error is not None:
            return _error_ticket(token, error)
        payload = {k: v for k, v in message.items() if k != "to"}
        if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_PAYLOAD_BYTES:
            return _error_ticket(token, "MessageTooBig")
        ticket_id = str(uuid.uuid4())
        self.receipts[ticket_id] = Receipt(
            token, _take(self._receipt_scripts, token), ready=not self._hold_receipts
        )
        self.messages.append(ExpoMessage(token, message, ticket_id))
        return {"status": "ok", "id": ticket_id}

    def _get_receipts(self, body: Any) -> _Outcome:
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _request_error(400, "VALIDATION_ERROR", '"ids" must be an array of strings.')
        if len(ids) > MAX_RECEIPT_IDS:
            return _request_error(
                400,
                "PUSH_TOO_MANY_RECEIPTS",
                f"You are trying to get more than {MAX_RECEIPT_IDS} push receipts in one request.",
            )
        tokens = [self.receipts[i].token for i in ids if i in self.receipts]
        failure = self._take_http_failure(RECEIPTS_PATH, tokens)
        if failure is not None:
            return failure
        data = {
            i: self.receipts[i].as_json()
            for i in ids
            if i in self.receipts and self.receipts[i].ready
        }
        return _Outcome(200, {"data": data})


_UNPARSABLE = object()


def _check_times(times: int | None) -> None:
    if times is not None and times < 1:
        raise ValueError("times must be at least 1 (or None: always)")


def _take(scripts: dict[str, list[_Script]], token: str) -> str | None:
    queue = scripts.get(token)
    if not queue:
        return None
    script = queue[0]
    if script.remaining is not None:
        script.remaining -= 1
        if script.remaining == 0:
            queue.pop(0)
    return script.error


def _request_error(status: int, code: str, message: str, *, transient: bool = False) -> _Outcome:
    return _Outcome(
        status, {"errors": [{"code": code, "message": message, "isTransient": transient}]}
    )


def _error_ticket(token: str, error: str, message: str | None = None) -> Json:
    return {
        "status": "error",
        "message": message or ERROR_MESSAGES[error].format(token=json.dumps(token)),
        "details": {"error": error, "expoPushToken": token},
    }


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_message(message: object, where: str) -> _Outcome | None:
    def invalid(text: str) -> _Outcome:
        return _request_error(400, "VALIDATION_ERROR", text)

    if not isinstance(message, dict):
        return invalid(f'"{where.rstrip(".") or "value"}" must be an object.')
    to = message.get("to")
    if isinstance(to, list):
        if not to or not all(isinstance(t, str) for t in to):
            return invalid(f'"{where}to" must be a push token or a non-empty array of them.')
    elif not isinstance(to, str):
        return invalid(f'"{where}to" is required: a push token or an array of them.')
    for name in STRING_FIELDS:
        if name in message and not isinstance(message[name], str):
            return invalid(f'"{where}{name}" must be a string.')
    for name in NUMBER_FIELDS:
        value = message.get(name)
        if name in message and not (_is_number(value) and value >= 0):
            return invalid(f'"{where}{name}" must be a number, at least 0.')
    if "data" in message and not isinstance(message["data"], dict):
        return invalid(f'"{where}data" must be an object.')
    if "priority" in message and message["priority"] not in PRIORITIES:
        return invalid(f'"{where}priority" must be one of {", ".join(PRIORITIES)}.')
    sound = message.get("sound")
    if sound is not None and not isinstance(sound, str | dict):
        return invalid(f'"{where}sound" must be a string, an object or null.')
    if "mutableContent" in message and not isinstance(message["mutableContent"], bool):
        return invalid(f'"{where}mutableContent" must be a boolean.')
    return None
