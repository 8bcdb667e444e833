"""Counts and versions stay exact under concurrency (docs/protocol.md, wire contract 1.1).

A hypothesis state machine drives one user's inbox on two ``tidings serve`` processes sharing
PostgreSQL and Redis: ``POST /notify`` and ``/notify/batch`` (with and without a category) on
either node; ``markSeen``, ``markAllSeen``, ``markRead``, ``markAllRead``, ``archive`` and
``unarchive`` as frames from any of the user's three devices (two on node a, one on node b) or
over HTTP (``/me/notifications/…`` with the device's JWT, ``/users/{user_id}/notifications/…``
with a service token, ``{"all": true}`` too); the same operation again (nothing changes the
second time); ids of another user or unknown ids (refused, nothing changes); several of these
at once from different devices and nodes; and, rarely, ``DELETE /users/{user_id}`` (every
socket of the user closes with 1000, the devices connect again).

The model is the contract, read independently of the implementation:

- ``count`` is the number of unseen notifications, ``unread`` the number not read (reading is
  seeing; archiving sees and reads; unarchiving keeps them read), ``categories`` the unseen
  count of each category that has any (the key left out when none has);
- ``version`` rises by exactly one for each notification created and for each operation that
  changed the state of any notification (an archive of a read one and an unarchive move no
  count, but are changes the other devices must hear of), and not at all for one that changed
  nothing (no count frame then); an erasure sets everything to 0, the version one higher;
- ``marked`` counts the notifications whose state the operation changed; mark-all covers
  everything that exists at the moment of the request.

After every step each device has, within ``STEP_TIMEOUT``, a last count frame equal to the
model's ``{count, version, unread, categories}``; no device ever gets a lower version than one
it already had on the same connection (nor two different frames of one version), and a device
that connects again after the erasure gets a version above every one it saw before. A second
user with two devices, one on each node, must see only the counts of their own notifications
(some batches carry one of theirs beside the first user's).

Concurrent operations are drawn so that the contract fixes their outcome whatever the order in
which the server runs them: notifications and marks of given ids (seen and read only set flags,
so the end state is the same in any order); mark-all only among marks, never beside a
notification being created; an archive only of ids no other operation of the group names. The
version then rises by the notifications created plus one for each operation whose ``marked`` is
above zero.

About 20 s with the defaults. ``TIDINGS_INBOX_EXAMPLES`` and ``TIDINGS_INBOX_STEPS`` run a longer
hunt; ``TIDINGS_INBOX_SHRINK=1`` shrinks a failure (each attempt can take up to
``STEP_TIMEOUT``, so this can take minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import REDIS_URL, ServerProcess, device_token, require_service
from tidings.client import DeviceClient
from tidings.errors import ClientError

T = TypeVar("T")

STEP_TIMEOUT = 10.0
CATEGORIES = ("orders", "social")
COUNT_KEYS = ("count", "version", "unread", "categories")
INBOX_FIELDS = ("category", "read_date", "archived_date")
EXAMPLES = int(os.environ.get("TIDINGS_INBOX_EXAMPLES", "20"))
STEPS = int(os.environ.get("TIDINGS_INBOX_STEPS", "25"))
SHRINK = os.environ.get("TIDINGS_INBOX_SHRINK", "") not in ("", "0")

SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    report_multiple_bugs=False,
)

Kind = Literal["seen", "read", "archive", "unarchive"]
# The frame for each kind of operation, given ids (False) or everything (True); archive and
# unarchive of everything exist over HTTP only.
FRAME_TYPES: dict[tuple[Kind, bool], str] = {
    ("seen", False): "markSeen",
    ("seen", True): "markAllSeen",
    ("read", False): "markRead",
    ("read", True): "markAllRead",
    ("archive", False): "archive",
    ("unarchive", False): "unarchive",
}
# How an operation travels: a frame from one of the first user's devices, or HTTP on node a or
# b with the device's JWT (/me/…) or a service token (/users/{user_id}/…).
DEVICE_VIAS = ("dev0", "dev1", "dev2")
HTTP_VIAS = ("me@a", "me@b", "svc@a", "svc@b")
NODES = {"a": 0, "b": 1}


# The model.


@dataclass
class Note:
    category: str | None
    seen: bool = False
    read: bool = False
    archived: bool = False


@dataclass(frozen=True)
class Mark:
    """One operation on notifications: ``ids`` ``None`` means all of the user's."""

    kind: Kind
    ids: tuple[str, ...] | None

    def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": FRAME_TYPES[self.kind, self.ids is None]}
        if self.ids is not None:
            frame["notification_ids"] = list(self.ids)
        return frame

    def body(self) -> dict[str, Any]:
        return {"all": True} if self.ids is None else {"notification_ids": list(self.ids)}


@dataclass
class Inbox:
    """What the contract says one user's inbox holds."""

    user: str
    notes: dict[str, Note] = field(default_factory=dict)
    version: int = 0

    def add(self, nid: str, category: str | None) -> None:
        assert nid not in self.notes, f"POST /notify answered an id already given: {nid}"
        self.notes[nid] = Note(category)
        self.version += 1

    def frame(self) -> dict[str, Any]:
        """The count frame's fields the model expects."""
        unseen = [note for note in self.notes.values() if not note.seen]
        frame: dict[str, Any] = {
            "count": len(unseen),
            "version": self.version,
            "unread": sum(not note.read for note in self.notes.values()),
        }
        categories = Counter(note.category for note in unseen if note.category is not None)
        if categories:  # "the key is left out when no category has any"
            frame["categories"] = dict(categories)
        return frame

    def apply(self, op: Mark) -> tuple[int, bool]:
        """Apply ``op``: how many notifications it changed, and whether that was a change (the
        version rises once when anything changed, whether a count moved or not)."""
        targets = list(self.notes.values()) if op.ids is None else [self.notes[i] for i in op.ids]
        marked, moved = 0, False
        for note in targets:
            if op.kind == "seen" and not note.seen:
                note.seen = True
                marked, moved = marked + 1, True
            elif op.kind == "read" and not note.read:
                note.seen = note.read = True  # reading is seeing
                marked, moved = marked + 1, True
            elif op.kind == "archive" and not note.archived:
                note.archived = note.seen = note.read = True
                marked, moved = marked + 1, True
            elif op.kind == "unarchive" and note.archived:
                note.archived = False  # stays read: no count moves, still a change
                marked, moved = marked + 1, True
        return marked, moved

    def name(self, nid: str) -> str:
        """A short name for a notification in the journal: its creation index."""
        return f"#{list(self.notes).index(nid)}" if nid in self.notes else nid

    def describe(self, op: Mark) -> str:
        ids = "all" if op.ids is None else ",".join(self.name(i) for i in op.ids)
        return f"{op.kind}({ids})"

    def table(self) -> str:
        rows = [
            f"  {self.name(nid)} {nid} category={note.category} seen={note.seen} "
            f"read={note.read} archived={note.archived}"
            for nid, note in self.notes.items()
        ]
        return "\n".join([f"model of {self.user}: version {self.version}", *rows])


def visible(frame: dict[str, Any]) -> dict[str, Any]:
    """The fields of a count frame the model speaks for (unknown fields are ignored)."""
    return {key: frame[key] for key in COUNT_KEYS if key in frame}


# Devices.


@dataclass(eq=False)
class Device:
    """One socket of a user, with every count frame it received, in order."""

    name: str
    inbox: Inbox
    node: ServerProcess
    floor: int = -1  # the highest version this device saw on its earlier connections
    client: DeviceClient | None = None
    counts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None

    @property
    def version(self) -> int:
        return int(self.counts[-1]["version"]) if self.counts else -1

    @property
    def closed(self) -> bool:
        return self.pump is not None and self.pump.done()

    async def connect(self) -> None:
        self.client = DeviceClient(self.node.ws_url, token=device_token(self.inbox.user))
        welcome = await self.client.connect()
        if welcome["user_id"] != self.inbox.user:
            self.problems.append(f"welcome for another user: {welcome}")
        self.pump = asyncio.create_task(self._pump(self.client))

    async def _pump(self, client: DeviceClient) -> None:
        async for frame in client.events():
            if frame.get("type") == "newNotificationCountChanged":
                self._take(frame)
            else:
                self.problems.append(f"unexpected frame {frame}")

    def _take(self, frame: dict[str, Any]) -> None:
        version = frame.get("version")
        if not isinstance(version, int):
            self.problems.append(f"count frame without an integer version: {frame}")
            return
        if not self.counts and version <= self.floor:
            self.problems.append(
                f"connected again after version {self.floor} and got version {version}: {frame}"
            )
        if self.counts:
            last = self.counts[-1]
            if version < last["version"]:
                self.problems.append(f"version went back: {visible(last)} then {visible(frame)}")
            elif version == last["version"] and visible(frame) != visible(last):
                self.problems.append(f"one version, two counts: {visible(last)}, {visible(frame)}")
        self.counts.append(frame)

    async def wait_closed(self) -> int | None:
        assert self.pump is not None and self.client is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STEP_TIMEOUT):
                await asyncio.shield(self.pump)
        return self.client.close_code if self.closed else None

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.pump is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.pump


# The cluster.


@dataclass
class Cluster:
    runner: asyncio.Runner
    http: httpx.AsyncClient
    nodes: list[ServerProcess]
    service: dict[str, str]  # scopes notify and admin
    answers: dict[str, str] = field(default_factory=dict)  # door: first answer off the contract

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def compare_answer(self, door: str, made: dict[str, Any], category: str | None) -> None:
        """A created notification as answered carries the inbox's fields of v1.1 ("every
        notification, in every frame and answer"): checked after the state machine, so that
        a wrong answer does not hide what the counts do."""
        inbox = {key: made.get(key, "(missing)") for key in INBOX_FIELDS}
        if inbox != {"category": category, "read_date": None, "archived_date": None}:
            self.answers.setdefault(door, f"category {category!r} sent, answered {made}")


@pytest.fixture
def nodes(postgres_url: str, start_server: Callable[..., ServerProcess]) -> list[ServerProcess]:
    require_service("Redis", REDIS_URL)
    bus = f"{REDIS_URL}?prefix=i{uuid.uuid4().hex[:8]}:"
    return [start_server(TIDINGS_STORE=postgres_url, TIDINGS_BUS=bus) for _ in range(2)]


class InboxMachine(RuleBasedStateMachine):
    cluster: ClassVar[Cluster]

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.ann = Inbox(f"ann-{tag}")
        self.bob = Inbox(f"bob-{tag}")
        a, b = self.cluster.nodes
        self.ann_devices = [
            Device(f"{self.ann.user}/dev{i}@{'aab'[i]}", self.ann, n)
            for i, n in enumerate((a, a, b))
        ]
        self.bob_devices = [
            Device(f"{self.bob.user}/dev{i}@{'ba'[i]}", self.bob, n) for i, n in enumerate((b, a))
        ]
        self.erased = False
        self.journal: list[str] = []
        self.ok = False  # the last step passed its checks (teardown checks once more then)
        self.sequence = 0
        self.last: tuple[Mark, str] | None = None  # the last operation of rule mark

    # Plumbing.

    @property
    def devices(self) -> list[Device]:
        return self.ann_devices + self.bob_devices

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.cluster.run(coro)

    def step(self, text: str) -> None:
        self.ok = False
        self.journal.append(text)

    def context(self) -> str:
        return "\n".join(
            [
                "steps (latest last):",
                *(f"  {line}" for line in self.journal[-12:]),
                self.ann.table(),
                self.bob.table(),
            ]
        )

    async def notify(self, node: int, user: Inbox, category: str | None) -> str:
        self.sequence += 1
        body: dict[str, Any] = {"user_id": user.user, "data": {"n": self.sequence}}
        if category is not None:
            body["category"] = category
        url = self.cluster.nodes[node].url
        answer = await self.cluster.http.post(
            f"{url}/notify", json=body, headers=self.cluster.service
        )
        assert answer.status_code == 201, f"POST /notify {body}: {answer.status_code} {answer.text}"
        made = answer.json()
        assert made["user_id"] == user.user, made
        self.cluster.compare_answer("POST /notify", made, category)
        return str(made["notification_id"])

    async def send(self, op: Mark, via: str) -> int | ClientError:
        """Send ``op`` by ``via``; the ``marked`` of the answer, or the refusal."""
        if via in DEVICE_VIAS:
            client = self.ann_devices[int(via[3:])].client
            assert client is not None
            try:
                answer = await client.request(op.frame(), timeout=STEP_TIMEOUT)
            except ClientError as exc:
                return exc
            return int(answer["marked"])
        door, node = via.split("@")
        url = self.cluster.nodes[NODES[node]].url
        if door == "me":
            path = f"/me/notifications/{op.kind}"
            headers = {"Authorization": f"Bearer {device_token(self.ann.user)}"}
        else:
            path = f"/users/{self.ann.user}/notifications/{op.kind}"
            headers = self.cluster.service
        response = await self.cluster.http.post(f"{url}{path}", json=op.body(), headers=headers)
        if response.status_code != 200:
            return ClientError("http", response.text, response.status_code)
        return int(response.json()["marked"])

    async def converge(self) -> None:
        """Wait until every open device has a count frame of its model's version."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_TIMEOUT
        while loop.time() < deadline and any(
            device.version < device.inbox.version and not device.closed for device in self.devices
        ):
            await asyncio.sleep(0.005)

    def check(self) -> None:
        self.run(self.converge())
        for device in self.devices:
            assert not device.problems, f"{device.name}: {device.problems}\n{self.context()}"
            assert device.client is not None
            assert not device.closed, (
                f"{device.name} was closed ({device.client.close_code})\n{self.context()}"
            )
            assert device.counts, f"{device.name} got no count frame\n{self.context()}"
            got, want = visible(device.counts[-1]), device.inbox.frame()
            assert got == want, (
                f"{device.name}: last count frame\n"
                f"  {got}\nbut the model says\n  {want}\n"
                f"its last frames: {[visible(f) for f in device.counts[-4:]]}\n{self.context()}"
            )

    # Strategies drawn from the model's state.

    def pick_ids(
        self, data: st.DataObject, label: str, among: list[str] | None = None
    ) -> tuple[str, ...]:
        pool = list(self.ann.notes) if among is None else among
        chosen = data.draw(
            st.lists(st.sampled_from(range(len(pool))), min_size=1, max_size=4, unique=True),
            label=label,
        )
        return tuple(pool[i] for i in chosen)

    def pick_via(self, data: st.DataObject, op: Mark, label: str) -> str:
        """Frames twice as often as HTTP; HTTP only for what has no frame."""
        doors: tuple[str, ...] = HTTP_VIAS
        if (op.kind, op.ids is None) in FRAME_TYPES:
            doors = data.draw(st.sampled_from([DEVICE_VIAS, DEVICE_VIAS, HTTP_VIAS]))
        return data.draw(st.sampled_from(doors), label=label)

    # Rules.

    @initialize()
    def setup(self) -> None:
        async def go() -> None:
            for device in self.ann_devices:  # an unknown user: 0, version 0
                await device.connect()
            for category in ("orders", None):
                self.bob.add(await self.notify(1, self.bob, category), category)
            for device in self.bob_devices:
                await device.connect()

        self.step(f"setup: {self.ann.user} on a, a, b; {self.bob.user} on b, a with 2")
        self.run(go())

    @rule(node=st.sampled_from([0, 1]), category=st.sampled_from([None, *CATEGORIES]))
    def notify_one(self, node: int, category: str | None) -> None:
        self.step(f"notify on {'ab'[node]} category={category}")
        self.ann.add(self.run(self.notify(node, self.ann, category)), category)

    @rule(
        node=st.sampled_from([0, 1]),
        items=st.lists(
            st.tuples(
                st.sampled_from(["ann", "ann", "ann", "bob"]),
                st.sampled_from([None, *CATEGORIES]),
            ),
            min_size=2,
            max_size=4,
        ),
    )
    def notify_batch(self, node: int, items: list[tuple[str, str | None]]) -> None:
        self.step(f"notify/batch on {'ab'[node]}: {items}")
        inboxes = {"ann": self.ann, "bob": self.bob}
        body = []
        for who, category in items:
            self.sequence += 1
            item: dict[str, Any] = {"user_id": inboxes[who].user, "data": {"n": self.sequence}}
            if category is not None:
                item["category"] = category
            body.append(item)
        url = self.cluster.nodes[node].url
        answer = self.run(
            self.cluster.http.post(
                f"{url}/notify/batch", json={"notifications": body}, headers=self.cluster.service
            )
        )
        assert answer.status_code == 200, f"{answer.status_code} {answer.text}"
        results = answer.json()
        assert results["created"] == len(items), results
        for (who, category), result in zip(items, results["results"], strict=True):
            assert result["status"] == 201, result
            made = result["notification"]
            assert made["user_id"] == inboxes[who].user, result
            self.cluster.compare_answer("POST /notify/batch", made, category)
            inboxes[who].add(str(made["notification_id"]), category)

    @rule(data=st.data())
    def mark(self, data: st.DataObject) -> None:
        kind: Kind = data.draw(st.sampled_from(["seen", "read", "archive", "unarchive"]))
        everything = not self.ann.notes or data.draw(st.booleans(), label="all")
        op = Mark(kind, None if everything else self.pick_ids(data, "ids"))
        via = self.pick_via(data, op, "via")
        self.last = (op, via)
        self.perform(op, via)

    @precondition(lambda self: self.last is not None)
    @rule(data=st.data())
    def mark_again(self, data: st.DataObject) -> None:
        """The previous operation again, perhaps by another door: unless something changed
        in between, it changes nothing (marked 0, no count frame, the same version)."""
        assert self.last is not None
        op, _ = self.last
        if op.ids is not None and not set(op.ids) <= set(self.ann.notes):
            return  # erased since
        self.perform(op, self.pick_via(data, op, "via"), again=True)

    def perform(self, op: Mark, via: str, again: bool = False) -> None:
        self.step(f"{'again: ' if again else ''}{self.ann.describe(op)} via {via}")
        outcome = self.run(self.send(op, via))
        marked, moved = self.ann.apply(op)
        assert not isinstance(outcome, ClientError), (
            f"{self.ann.describe(op)} via {via} refused: {outcome}\n{self.context()}"
        )
        assert outcome == marked, (
            f"{self.ann.describe(op)} via {via}: marked {outcome}, the model {marked}\n"
            f"{self.context()}"
        )
        if moved:
            self.ann.version += 1

    @precondition(lambda self: bool(self.ann.notes))
    @rule(data=st.data())
    def mark_foreign(self, data: st.DataObject) -> None:
        """An id of another user, or unknown, among the user's own: refused, nothing changes."""
        kind: Kind = data.draw(st.sampled_from(["seen", "read", "archive", "unarchive"]))
        stranger = data.draw(st.sampled_from(["bob", "unknown"]), label="stranger")
        foreign = next(iter(self.bob.notes)) if stranger == "bob" else f"nope-{uuid.uuid4().hex}"
        ids = self.pick_ids(data, "ids")
        position = data.draw(st.integers(0, len(ids)), label="position")
        op = Mark(kind, (*ids[:position], foreign, *ids[position:]))
        via = self.pick_via(data, op, "via")
        self.step(f"{self.ann.describe(op)} via {via} ({stranger} id: must be refused)")
        outcome = self.run(self.send(op, via))
        assert isinstance(outcome, ClientError), (
            f"{self.ann.describe(op)} via {via} with {stranger}'s id {foreign}: not refused "
            f"(marked {outcome})\n{self.context()}"
        )
        if via in DEVICE_VIAS:
            assert outcome.code == "not_found", outcome
            if kind == "seen":  # "the error not_found listing those ids"
                assert outcome.details.get("notification_ids") == [foreign], outcome.details
        else:
            assert outcome.status == 404 and foreign in outcome.message, outcome

    @rule(data=st.data())
    def concurrently(self, data: st.DataObject) -> None:
        """Several operations at once, by different devices and nodes."""
        notes = list(self.ann.notes)
        creating = data.draw(st.integers(0, 3), label="notifications")
        if not notes and creating:
            creating, marking = max(creating, 2), 0
        else:
            marking = data.draw(st.integers(max(0, 2 - creating), 3), label="marks")
        made = [
            (
                data.draw(st.sampled_from([0, 1]), label="node"),
                data.draw(st.sampled_from([None, *CATEGORIES]), label="category"),
            )
            for _ in range(creating)
        ]
        marks: list[tuple[Mark, str]] = []
        for n in range(marking):
            kind: Kind = data.draw(st.sampled_from(["seen", "read"]), label=f"kind {n}")
            everything = not creating and (not notes or data.draw(st.booleans(), label="all"))
            op = Mark(kind, None if everything else self.pick_ids(data, f"ids {n}"))
            marks.append((op, self.pick_via(data, op, f"via {n}")))
        named = {i for op, _ in marks for i in (op.ids or notes)}
        rest = [i for i in notes if i not in named]
        archive: tuple[Mark, str] | None = None
        if all(op.ids is not None for op, _ in marks) and rest and data.draw(st.booleans()):
            op = Mark("archive", self.pick_ids(data, "archive ids", rest))
            archive = (op, self.pick_via(data, op, "archive via"))
        group = [f"notify on {'ab'[node]} category={category}" for node, category in made]
        group += [f"{self.ann.describe(op)} via {via}" for op, via in marks]
        if archive is not None:
            group.append(f"{self.ann.describe(archive[0])} via {archive[1]}")
        self.step("at once: " + "; ".join(group))

        async def go() -> tuple[list[str], list[int | ClientError]]:
            created = [self.notify(node, self.ann, category) for node, category in made]
            sent = [self.send(op, via) for op, via in marks + ([archive] if archive else [])]
            return await asyncio.gather(asyncio.gather(*created), asyncio.gather(*sent))

        before = {nid: replace(note) for nid, note in self.ann.notes.items()}
        ids, outcomes = self.run(go())
        marked: list[int] = []
        for outcome in outcomes:
            assert not isinstance(outcome, ClientError), f"refused: {outcome}\n{self.context()}"
            marked.append(outcome)

        def covered(kind: Kind) -> set[str]:
            return {i for op, _ in marks if op.kind == kind for i in (op.ids or notes)}

        # Each notification is read by exactly one of the reads; seen by at most one of the
        # marks, and by one of the markSeen when no read named it.
        reads = sum(m for (op, _), m in zip(marks, marked, strict=False) if op.kind == "read")
        sees = sum(m for (op, _), m in zip(marks, marked, strict=False) if op.kind == "seen")
        unread = {i for i in covered("read") if not before[i].read}
        unseen = {i for i in covered("seen") if not before[i].seen}
        assert reads == len(unread), (
            f"the reads marked {reads}, not {len(unread)}\n{self.context()}"
        )
        assert len(unseen - covered("read")) <= sees <= len(unseen), (
            f"the markSeen marked {sees} of {len(unseen)} unseen\n{self.context()}"
        )
        # The model: flags set in any order end the same; the versions as the answers say.
        bump = len(ids) + sum(m > 0 for m in marked[: len(marks)])
        for op, _ in marks:
            self.ann.apply(op)
        if archive is not None:
            expected, moved = self.ann.apply(archive[0])
            assert marked[-1] == expected, (
                f"the archive marked {marked[-1]}, not {expected}\n{self.context()}"
            )
            bump += moved
        for nid, (_, category) in zip(ids, made, strict=True):
            self.ann.notes[nid] = Note(category)
        self.ann.version += bump

    @precondition(lambda self: not self.erased and self.ann.version > 0 and len(self.journal) > 6)
    @rule(node=st.sampled_from([0, 1]))
    def erase(self, node: int) -> None:
        """DELETE /users/{user_id}: every socket of the user closes with 1000 on both nodes; the
        devices connect again and get 0, one version higher."""
        self.step(f"erase {self.ann.user} on {'ab'[node]}")
        self.erased = True
        heard = [len(device.counts) for device in self.ann_devices]
        url = self.cluster.nodes[node].url
        answer = self.run(
            self.cluster.http.delete(f"{url}/users/{self.ann.user}", headers=self.cluster.service)
        )
        assert answer.status_code == 200, f"{answer.status_code} {answer.text}"
        erased = answer.json()["erased"]
        assert erased["notifications"] == len(self.ann.notes), (erased, self.context())
        assert erased["devices"] == len(self.ann_devices), (erased, self.context())
        self.ann.notes.clear()
        self.ann.version += 1
        for device, seen in zip(self.ann_devices, heard, strict=True):
            code = self.run(device.wait_closed())
            assert code == 1000, f"{device.name}: closed with {code} after the erasure"
            assert not device.problems, (device.name, device.problems)
            for frame in device.counts[seen:]:  # a last count before closing: the erased one
                assert visible(frame) == self.ann.frame(), (device.name, frame, self.context())
        for slot, device in enumerate(self.ann_devices):
            self.run(device.close())
            fresh = Device(
                device.name, self.ann, device.node, floor=max(device.version, device.floor)
            )
            self.ann_devices[slot] = fresh
            try:
                self.run(fresh.connect())
            except ClientError as exc:
                raise AssertionError(
                    f"{device.name} connected again once every socket of the user had closed "
                    f"after the erasure, and was refused: {exc} "
                    f"(close code {exc.details.get('close_code')})\n"
                    f"{self.context()}"
                ) from exc

    @invariant()
    def every_device_shows_the_model(self) -> None:
        self.check()
        self.ok = True

    def teardown(self) -> None:
        if not self.ok:  # shown by pytest with the failure
            print(f"--- the example that failed ---\n{self.context()}")
        try:
            if self.ok:
                # One notification more for each user: a count frame a step sent that it should
                # not have (after a mark that changed nothing) would stand out now.
                self.step("teardown: notify each user once more")
                self.ann.add(self.run(self.notify(0, self.ann, None)), None)
                self.bob.add(self.run(self.notify(1, self.bob, "social")), "social")
                self.check()
        finally:
            for device in self.devices:
                self.run(device.close())


@pytest.mark.timeout(180)
def test_counts_and_versions_stay_exact_under_concurrency(nodes: list[ServerProcess]) -> None:
    service = {"Authorization": f"Bearer {nodes[0].service_token('notify', 'admin')}"}
    with asyncio.Runner() as runner:
        http = runner.run(make_http())
        try:

            class Machine(InboxMachine):
                cluster = Cluster(runner, http, nodes, service)

            run_state_machine_as_test(Machine, settings=SETTINGS)
        finally:
            runner.run(http.aclose())
    assert not Machine.cluster.answers, "answers without the inbox's fields:\n" + "\n".join(
        f"  {door}: {problem}" for door, problem in Machine.cluster.answers.items()
    )


async def make_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=STEP_TIMEOUT)
