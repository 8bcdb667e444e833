"""A lean fake APNs for benchmarks: HTTP/2 over TLS spoken with ``h2`` directly on an asyncio
protocol, so that it answers many times faster than the test suite's hypercorn fake and the
node under test is what a benchmark measures.

It checks less than ``tests/support/fake_apns.py`` (which the tests use): the path, the
``apns-topic``, and the provider token's ES256 signature, verified once per distinct token (the
node sends the same one for 50 minutes). Every other request gets 200 and an ``apns-id``.

    python bench/fast_apns.py DIR COUNT_PORT     # prints its URL, CA and key as one JSON line
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import h2.config
import h2.connection
import h2.events
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from support.fake_apns import make_p8_key, make_tls_files

accepted = 0


#: provider tokens whose signature was checked (the node sends one for 50 minutes)
verified: set[str] = set()


class Apns(asyncio.Protocol):
    """One TLS connection from the node: HTTP/2 requests answered as they end."""

    def __init__(self, key: ECKey, topic: str) -> None:
        self.key = key
        self.topic = topic
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.headers: dict[int, dict[str, str]] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = {
                    (k.decode() if isinstance(k, bytes) else k): (
                        v.decode() if isinstance(v, bytes) else v
                    )
                    for k, v in event.headers
                }
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id, self.headers.pop(event.stream_id, {}))
        self.transport.write(self.h2.data_to_send())

    def answer(self, stream_id: int, headers: dict[str, str]) -> None:
        global accepted
        status, body = 200, b""
        token = headers.get("authorization", "").removeprefix("bearer ")
        if not headers.get(":path", "").startswith("/3/device/"):
            status, body = 404, b'{"reason":"BadPath"}'
        elif headers.get("apns-topic") != self.topic:
            status, body = 400, b'{"reason":"TopicDisallowed"}'
        elif token not in verified:
            try:
                jwt.decode(token, self.key, algorithms=["ES256"])
                verified.add(token)
            except (JoseError, ValueError):
                status, body = 403, b'{"reason":"InvalidProviderToken"}'
        if status == 200:
            accepted += 1
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        reply = [(":status", str(status)), ("apns-id", apns_id)]
        if body:
            reply.append(("content-length", str(len(body))))
        self.h2.send_headers(stream_id, reply, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)


class Count(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(accepted).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def main(directory: Path, count_port: int, topic: str) -> None:
    path, key_id, team_id = make_p8_key(directory)
    tls = make_tls_files(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_path, tls.key_path)
    context.set_alpn_protocols(["h2"])
    key = ECKey.import_key(path.read_bytes())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Apns(key, topic), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    counter = ThreadingHTTPServer(("127.0.0.1", count_port), Count)
    Thread(target=counter.serve_forever, daemon=True).start()
    print(
        json.dumps(
            {
                "url": f"https://127.0.0.1:{port}",
                "ca": str(tls.ca_path),
                "key": str(path),
                "key_id": key_id,
                "team_id": team_id,
            }
        ),
        flush=True,
    )
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
