"""Pipeline workers as separate processes (``tidings worker``) sharing one PostgreSQL store
with an API-only node: leases, a worker SIGKILLed or frozen mid-send, two workers on the same
queue, and (with a PostgreSQL bus) template changes and in-app notifications across processes.

The SMTP server is aiosmtpd on a loopback port; a DATA it holds open stands for a slow provider.
Each DATA is recorded with the X-Tidings-Delivery header, when it opened and how it ended, so a
delivery sent twice at the same time, or accepted twice, shows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pipeline_support import (
    Block,
    Slow,
    SmtpSink,
    WorkerProcess,
    api_client,
    assert_never_concurrent,
    delivery,
    get_message,
    history,
    post_message,
    sink,
    text_part,
    wait_message,
    worker_env,
)

from conftest import ServerProcess, device_token
from tidings.client import DeviceClient

LEASE = 2.0  # seconds; workers renew every third of it
HOLD = 3.5  # a slow provider holds DATA this long: longer than a lease
PIPELINE = {
    "TIDINGS_PIPELINE_LEASE": str(LEASE),
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
    "TIDINGS_PIPELINE_RETRY_BASE": "0.2",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.5",
}

StartWorker = Callable[..., WorkerProcess]


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def email_users(http: httpx.Client, n: int) -> list[tuple[str, str]]:
    """``n`` new users with an email contact point each: (user_id, address)."""
    users = []
    for _ in range(n):
        user = new_user()
        address = f"{user}@example.org"
        response = http.put(f"/users/{user}/contacts/email", json={"address": address})
        assert response.status_code < 300, response.text
        users.append((user, address))
    return users


def email_to(user_ids: list[str], text: str = "Hello") -> dict[str, object]:
    return {
        "recipients": {"user_ids": user_ids},
        "channels": ["email"],
        "content": {"subject": "Test", "text": text},
    }


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartWorker]:
    """``workers(api, name, **env)``: a ``tidings worker`` process with the API node's
    settings, killed at the test's end (its log printed if the test failed)."""
    started: list[WorkerProcess] = []

    def start(api: ServerProcess, name: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, worker_env(api, name, **env), tmp_path / f"{name}.log")
        started.append(worker.start())
        return worker

    yield start
    report = getattr(request.node, "report_call", None)
    for worker in started:
        worker.kill()
        if report is not None and report.failed:
            code = worker.process.returncode if worker.process else None
            print(f"\n--- log of {worker.name} (exit code {code}) ---\n{worker.log()[-4000:]}")


@pytest.fixture
def pg_api(
    postgres_url: str, start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> ServerProcess:
    """An API-only node (no workers) on PostgreSQL, sending email to the sink."""
    return start_server(
        TIDINGS_STORE=postgres_url,
        TIDINGS_WORKERS="0",
        TIDINGS_SMTP_URL=sink.url,
        **PIPELINE,
    )


def test_worker_killed_mid_send_goes_stale_and_is_sent_again_once(
    pg_api: ServerProcess, sink: SmtpSink, workers: StartWorker
) -> None:
    """A worker SIGKILLed while the SMTP server holds its DATA: once its lease expires another
    worker marks the delivery stale (lease_expired) and sends it; the server accepts it once."""
    with api_client(pg_api, pg_api.service_token("messages")) as http:
        ((user, address),) = email_users(http, 1)
        sink.script(address, Block())
        worker_a = workers(pg_api, "worker-a")
        message = post_message(http, email_to([user]))
        (first,) = sink.wait_records(lambda found: len(found) == 1, address=address, timeout=20)
        active = delivery(get_message(http, message["message_id"]), user, "email")
        assert active["state"] == "active", active
        assert first.delivery_id == active["delivery_id"], (first.delivery_id, active)

        worker_a.kill()
        sink.wait_records(lambda found: found[0].outcome == "cancelled", address=address, timeout=5)
        worker_b = workers(pg_api, "worker-b")
        done = wait_message(http, message["message_id"], timeout=30)
        sent = delivery(done, user, "email")
        assert sent["state"] == "sent", sent
        steps = history(sent)
        assert ("stale", "lease_expired") in steps, steps
        stale_at = steps.index(("stale", "lease_expired"))
        assert ("active", "claimed") in steps[stale_at:], steps
        assert steps[-1] == ("sent", "sent"), steps
        assert sent["attempts"] == 2, sent
        assert done["state"] == "sent", done
    records = sink.records(address=address)
    assert len(records) == 2, records
    assert len(sink.accepted(delivery_id=sent["delivery_id"])) == 1
    assert_never_concurrent(records)
    assert worker_b.alive()


def test_frozen_worker_loses_its_lease_and_abandons_its_send(
    pg_api: ServerProcess, sink: SmtpSink, workers: StartWorker
) -> None:
    """A worker frozen (SIGSTOP) mid-send loses its lease: another worker sends the delivery;
    resumed, the first one finds it cannot renew, drops its SMTP session unanswered and
    changes nothing; the server accepted the email once."""
    with api_client(pg_api, pg_api.service_token("messages")) as http:
        ((user, address),) = email_users(http, 1)
        sink.script(address, Block())
        worker_a = workers(pg_api, "worker-a")
        message = post_message(http, email_to([user]))
        sink.wait_records(lambda found: len(found) == 1, address=address, timeout=20)
        os.kill(worker_a.pid, signal.SIGSTOP)
        try:
            workers(pg_api, "worker-b")
            done = wait_message(http, message["message_id"], timeout=30)
            sent = delivery(done, user, "email")
            assert sent["state"] == "sent" and sent["attempts"] == 2, sent
            assert ("stale", "lease_expired") in history(sent), history(sent)
        finally:
            os.kill(worker_a.pid, signal.SIGCONT)
        first = sink.wait_records(
            lambda found: found[0].ended is not None, address=address, timeout=LEASE + 5
        )[0]
        assert first.outcome == "cancelled", first
        time.sleep(LEASE / 2)  # let a late completion of worker A land, if it were to
        after = delivery(get_message(http, message["message_id"]), user, "email")
    assert after == sent, (sent, after)
    assert len(sink.accepted(address=address)) == 1
    assert worker_a.alive()


def test_two_workers_never_send_one_delivery_twice_at_once(
    pg_api: ServerProcess, sink: SmtpSink, workers: StartWorker
) -> None:
    """Two workers on one queue, a provider slower than the lease: the workers keep renewing,
    so no delivery goes stale, none is in two SMTP sessions at once, each is accepted once."""
    with api_client(pg_api, pg_api.service_token("messages")) as http:
        users = email_users(http, 4)
        for _, address in users:
            sink.script(address, Slow(HOLD))
        pool = [workers(pg_api, "worker-a"), workers(pg_api, "worker-b")]
        message = post_message(http, email_to([user for user, _ in users]))
        done = wait_message(http, message["message_id"], timeout=HOLD + 25)
    assert done["state"] == "sent", done
    addresses = {address for _, address in users}
    records = [r for r in sink.records() if r.rcpt in addresses]
    assert_never_concurrent(records)
    for user, address in users:
        sent = delivery(done, user, "email")
        assert sent["state"] == "sent" and sent["attempts"] == 1, sent
        assert "stale" not in [state for state, _ in history(sent)], sent
        assert len(sink.accepted(delivery_id=sent["delivery_id"])) == 1
        assert [r.delivery_id for r in sink.records(address=address)] == [sent["delivery_id"]]
    assert min(r.ended - r.started for r in records if r.ended) >= HOLD - 0.1
    for worker in pool:
        assert worker.alive()
        assert worker.stop() is not None, f"{worker.name} did not stop on SIGTERM"


async def test_worker_process_renders_changed_template_and_reaches_devices(
    postgres_url: str,
    start_server: Callable[..., ServerProcess],
    sink: SmtpSink,
    workers: StartWorker,
) -> None:
    """With a PostgreSQL bus, a worker process renders a template replaced on the API node
    (no stale cached version), and its in_app notification reaches a device on the API node."""
    api = await asyncio.to_thread(
        start_server,
        TIDINGS_STORE=postgres_url,
        TIDINGS_BUS=postgres_url,
        TIDINGS_WORKERS="0",
        TIDINGS_SMTP_URL=sink.url,
        **PIPELINE,
    )
    token = await asyncio.to_thread(api.service_token, "messages")
    http = api_client(api, token)
    try:
        ((user, address),) = await asyncio.to_thread(email_users, http, 1)
        template_id = f"tpl-{uuid.uuid4().hex[:8]}"

        def put_template(text: str) -> None:
            response = http.put(f"/templates/{template_id}", json={"text": text})
            assert response.status_code in (200, 201), response.text

        def send(n: int, channels: list[str]) -> dict[str, object]:
            body = {
                "recipients": {"user_ids": [user]},
                "channels": channels,
                "template_id": template_id,
                "data": {"n": n},
            }
            message = post_message(http, body)
            return wait_message(http, str(message["message_id"]), timeout=20)

        def body_of(n: int) -> str:
            (record,) = [
                r
                for r in sink.accepted(address=address)
                if str(n) in (text_part(r.message, "plain") or "")
            ]
            return (text_part(record.message, "plain") or "").strip()

        await asyncio.to_thread(put_template, "First {{ n }}")
        workers(api, "worker-a")
        async with DeviceClient(api.ws_url, token=device_token(user)) as device:
            done = await asyncio.to_thread(send, 1, ["email", "in_app"])
            assert done["state"] == "sent", done
            assert body_of(1) == "First 1"
            await device.wait_for_count(1)
            (note,) = await device.get_unseen()
            in_app = delivery(done, user, "in_app")
            assert note["notification_id"] == f"pipeline-{in_app['delivery_id']}"
            assert note["data"]["text"] == "First 1", note

            await asyncio.to_thread(put_template, "Second {{ n }}")
            # The change reaches the worker's cache over the bus; allow it a moment.
            await asyncio.sleep(0.5)
            done = await asyncio.to_thread(send, 2, ["email"])
            assert done["state"] == "sent", done
            assert body_of(2) == "Second 2"
    finally:
        http.close()


__all__ = ["sink"]  # the fixture
