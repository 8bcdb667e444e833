"""Local fakes of the email and SMS providers' HTTP APIs, each a real HTTP server on a loopback
port (a thread), usable from in-process tests and by a node in a child process alike.

Written from the providers' documentation, not from tidings' code:

- :class:`FakePostmark`: ``POST /email`` as "Sending email with API" documents it: the
  ``X-Postmark-Server-Token`` header (else ``401`` with ``ErrorCode`` 10), ``Accept`` and
  ``Content-Type`` ``application/json``, a JSON body with ``From``, ``To``, ``Subject`` and
  ``TextBody`` or ``HtmlBody``, ``Headers`` a list of ``{"Name", "Value"}`` (else ``422``
  ``ErrorCode`` 300); answers ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message":
  "OK"}``.
- :class:`FakeTwilio`: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as the Message
  resource documents it: HTTP basic authentication with the account SID and auth token (else
  ``401`` code 20003), a form with ``To``, ``Body`` and ``From`` or ``MessagingServiceSid``
  (else ``400`` code 21604/21602/21603); answers ``201`` with the message's ``sid``.
  :func:`twilio_signature` signs a status callback as "Secure webhooks" says.
- :class:`SesGate`: a scriptable gate in front of moto's SES: a scripted answer (``503``), or
  the request relayed to moto once its Signature Version 4 has been checked again against the
  bytes that arrived.
- :class:`FakeSns`: the HTTPS host of an SNS signing certificate, signing SNS messages as
  "Verifying the signatures of Amazon SNS messages" describes, and taking subscription
  confirmations.

Each fake records what it took; ``script(...)`` queues answers for the next requests.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from conftest import free_port
from support.fake_apns import make_tls_files

#: a scripted answer: status, JSON body, extra headers
Answer = tuple[int, Any, dict[str, str]]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class _Fake:
    """A threaded HTTP(S) server whose ``handle(method, path, headers, body)`` answers."""

    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    scripted: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload, extra = fake.handle(self.command, self.path, headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **extra}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *answers: Answer | int) -> None:
        with self._lock:
            self.scripted += [a if isinstance(a, tuple) else (a, {}, {}) for a in answers]

    def next_scripted(self) -> Answer | None:
        with self._lock:
            return self.scripted.pop(0) if self.scripted else None

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.seen.append(Seen(path, headers, body))

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        raise NotImplementedError


class FakePostmark(_Fake):
    def __init__(self, token: str = "pm-server-token") -> None:
        self.token = token
        self.accepted: list[dict[str, Any]] = []
        super().__init__()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self.record(path, headers, body)
        if method != "POST" or path != "/email":
            return 404, {"ErrorCode": 404, "Message": "not found"}, {}
        if headers.get("x-postmark-server-token") != self.token:
            return 401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}, {}
        if headers.get("accept") != "application/json" or not headers.get(
            "content-type", ""
        ).startswith("application/json"):
            return 415, {"ErrorCode": 409, "Message": "JSON required."}, {}
        try:
            email = json.loads(body)
        except ValueError:
            return 422, {"ErrorCode": 402, "Message": "Invalid JSON."}, {}
        problem = _postmark_problem(email)
        if problem:
            return 422, {"ErrorCode": 300, "Message": f"Invalid email request: {problem}"}, {}
        scripted = self.next_scripted()
        if scripted is not None:
            return scripted
        self.accepted.append(email)
        message_id = str(uuid.uuid4())
        return (
            200,
            {
                "To": email["To"],
                "SubmittedAt": datetime.datetime.now(datetime.UTC).isoformat(),
                "MessageID": message_id,
                "ErrorCode": 0,
                "Message": "OK",
            },
            {},
        )


def _postmark_problem(email: Any) -> str | None:
    if not isinstance(email, dict):
        return "the body is not an object"
    for name in ("From", "To", "Subject"):
        if not isinstance(email.get(name), str) or not email[name]:
            return f"{name} is required"
    if not (isinstance(email.get("TextBody"), str) or isinstance(email.get("HtmlBody"), str)):
        return "TextBody or HtmlBody is required"
    headers = email.get("Headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, dict) and set(h) == {"Name", "Value"} for h in headers
    ):
        return "Headers must be a list of {Name, Value}"
    return None


class FakeTwilio(_Fake):
    def __init__(self, sid: str = "AC" + "0" * 32, token: str = "twilio-auth-token") -> None:
        self.sid = sid
        self.token = token
        self.accepted: list[dict[str, str]] = []
        super().__init__()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self.record(path, headers, body)
        if method != "POST" or path != f"/2010-04-01/Accounts/{self.sid}/Messages.json":
            return 404, {"code": 20404, "message": "not found", "status": 404}, {}
        expected = base64.b64encode(f"{self.sid}:{self.token}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"code": 20003, "message": "Authenticate", "status": 401}, {}
        if headers.get("content-type") != "application/x-www-form-urlencoded":
            return 400, {"code": 20001, "message": "form expected", "status": 400}, {}
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if not form.get("To"):
            return 400, {"code": 21604, "message": "A 'To' phone number is required."}, {}
        if not form.get("Body"):
            return 400, {"code": 21602, "message": "Message body is required."}, {}
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return 400, {"code": 21603, "message": "'From' phone number is required."}, {}
        scripted = self.next_scripted()
        if scripted is not None:
            return scripted
        self.accepted.append(form)
        sid = "SM" + uuid.uuid4().hex
        return 201, {"sid": sid, "status": "queued", "to": form["To"], "body": form["Body"]}, {}


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """The ``X-Twilio-Signature`` of a request (Twilio's "Secure webhooks")."""
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


class SesGate(_Fake):
    """In front of moto's server: a scripted answer, or the request relayed to moto after
    checking that it is signed (SigV4, service ``ses``) with ``key``/``secret``."""

    def __init__(self, moto_url: str, key: str, secret: str, region: str) -> None:
        self.moto = urlsplit(moto_url)
        self.key, self.secret, self.region = key, secret, region
        super().__init__()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self.record(path, headers, body)
        problem = self.check_signature(method, path, headers, body)
        if problem:
            return 403, {"message": problem}, {"x-amzn-ErrorType": "InvalidSignatureException"}
        scripted = self.next_scripted()
        if scripted is not None:
            return scripted
        conn = http.client.HTTPConnection(self.moto.hostname or "", self.moto.port, timeout=10)
        try:
            conn.request(method, path, body, headers)
            answer = conn.getresponse()
            data = answer.read()
            kept = {
                k: v
                for k, v in answer.getheaders()
                if k.lower() in ("x-amzn-errortype", "x-amzn-requestid")
            }
            return answer.status, data, kept
        finally:
            conn.close()

    def check_signature(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> str | None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        authorization = headers.get("authorization", "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            return "not signed with AWS4-HMAC-SHA256"
        parts = dict(p.strip().split("=", 1) for p in authorization[17:].split(","))
        scope = parts.get("Credential", "").split("/")
        if scope[:1] != [self.key] or scope[2:] != [self.region, "ses", "aws4_request"]:
            return f"unexpected credential scope {parts.get('Credential')}"
        signed = parts.get("SignedHeaders", "").split(";")
        request = AWSRequest(
            method=method,
            url=f"http://{headers['host']}{path}",
            data=body,
            headers={name: headers[name] for name in signed if name in headers},
        )
        request.context["timestamp"] = headers.get("x-amz-date", "")
        auth = SigV4Auth(Credentials(self.key, self.secret), "ses", self.region)
        expected = auth.signature(
            auth.string_to_sign(request, auth.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, parts.get("Signature", "")):
            return "the signature does not match"
        return None


class FakeSns(_Fake):
    """Serves an SNS signing certificate over HTTPS at :attr:`cert_url` and takes
    ``ConfirmSubscription`` visits; :meth:`notification` makes signed SNS messages."""

    def __init__(self, directory: Path, topic_arn: str) -> None:
        files = make_tls_files(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert_path, files.key_path)
        self.ca_path = files.ca_path
        self.topic_arn = topic_arn
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert_pem = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        self.confirmed: list[str] = []
        super().__init__(tls=context)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cert_url(self) -> str:
        return f"{self.url}/SimpleNotificationService-test.pem"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self.record(path, headers, body)
        if path == "/SimpleNotificationService-test.pem":
            return 200, self.cert_pem, {"Content-Type": "application/x-pem-file"}
        if path.startswith("/?Action=ConfirmSubscription"):
            self.confirmed.append(path)
            return 200, b"<ConfirmSubscriptionResponse/>", {"Content-Type": "text/xml"}
        return 404, {}, {}

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        """``message`` with ``SignatureVersion``, ``SigningCertURL`` and ``Signature``."""
        fields = (
            ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
            if message["Type"] == "Notification"
            else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
        )
        data = "".join(f"{k}\n{message[k]}\n" for k in fields if k in message).encode()
        digest = hashes.SHA256() if version == "2" else hashes.SHA1()
        signature = self.key.sign(data, padding.PKCS1v15(), digest)
        return {
            **message,
            "SignatureVersion": version,
            "SigningCertURL": self.cert_url,
            "Signature": base64.b64encode(signature).decode(),
        }

    def notification(self, ses_event: dict[str, Any], **changes: Any) -> dict[str, Any]:
        """A signed SNS notification carrying ``ses_event``."""
        message = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": self.topic_arn,
            "Message": json.dumps(ses_event),
            "Timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "UnsubscribeURL": f"{self.url}/?Action=Unsubscribe",
        }
        return self.sign({**message, **changes})

    def subscription(self) -> dict[str, Any]:
        return self.sign(
            {
                "Type": "SubscriptionConfirmation",
                "MessageId": str(uuid.uuid4()),
                "Token": "token-1",
                "TopicArn": self.topic_arn,
                "Message": "You have chosen to subscribe to the topic.",
                "SubscribeURL": f"{self.url}/?Action=ConfirmSubscription&Token=token-1",
                "Timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )


def ses_event(kind: str, message_id: str, **about: Any) -> dict[str, Any]:
    """An SES event-publishing record (``eventType``) of ``kind`` about ``message_id``."""
    record: dict[str, Any] = {
        "eventType": kind,
        "mail": {"messageId": message_id, "timestamp": "2026-12-06T10:00:00.000Z"},
    }
    record[kind.lower()] = about
    return record


class MotoSes:
    """moto in server mode (a real HTTP endpoint for SES v2), with ``domain`` verified.
    :meth:`sent` reads what it took through moto's backend inspection endpoint."""

    def __init__(self, region: str, key: str, secret: str, domain: str = "example.com") -> None:
        from moto.server import ThreadedMotoServer

        self.region, self.key, self.secret, self.domain = region, key, secret, domain
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.reset()

    def reset(self) -> None:
        """Forget everything, then verify the domain again."""
        import boto3

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()
        client = boto3.client(
            "sesv2",
            region_name=self.region,
            endpoint_url=self.url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )
        client.create_email_identity(EmailIdentity=self.domain)

    def sent(self) -> list[dict[str, Any]]:
        """The raw emails moto's SES took: ``{"id", "source", "destinations", "raw_data"}``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/moto-api/data.json")
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return list(data.get("ses", {}).get("RawMessage", []))

    def close(self) -> None:
        self.server.stop()
