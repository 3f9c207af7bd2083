"""Shared pieces of the part tests: real brokers, a small topology, parts run in a task group, a subscriber.

Each ``test_part_*`` module checks one room of the daemon on its own, with real SQLite files and a
real mosquitto where messages are involved, in seconds. What they share lives here:

- :func:`brokers` starts one anonymous mosquitto per named site under ``tmp_path``;
- :func:`topology` builds the sites/routes/tuning dataclasses directly (no TOML), with short timers;
- :func:`running` is a task group whose tasks (the parts' endless loops) are cancelled when the block ends;
- :class:`Subscriber` collects one topic filter on one broker (a persistent MQTT v5 session, so a broker
  restart loses nothing) and wakes waiters on each message;
- :func:`report_publisher` wires a site's journaled reports to its broker as ``daemon.site`` does;
- :func:`hold_file` journals a held file and its first transfer, as the summit's registrar does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.aio import raise_if_cancelling
from daemon.config import Endpoint, Route, SiteConfig, Topology, Tuning
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.journal import reports as journal_reports
from daemon.mailbox import Account, Mailbox, MessageHandler
from daemon.publisher import LogPublisher
from daemon.trust import Trust
from ops.broker import BrokerError, Mosquitto, free_port
from protocol.signing import generate_keypair, public_key_to_text

ROLES = {"summit": "summit", "base": "relay", "archive": "archive"}
PRIMARY = Route(name="primary", sites=("summit", "base", "archive"))
DIRECT = Route(name="direct", sites=("summit", "archive"))
TOKEN = "part-tests-token-0123456789abcdef"


def checksum_of(data: bytes) -> str:
    """The wire checksum ``blake3:<hex>`` of ``data``."""
    return f"blake3:{blake3.blake3(data).hexdigest()}"


# ---- brokers and topology -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def brokers(tmp_path: Path, *sites: str) -> AsyncIterator[dict[str, Mosquitto]]:
    """One started anonymous mosquitto per site (``tmp_path/brokers/<site>``), stopped at the end."""
    started: dict[str, Mosquitto] = {}
    try:
        for site in sites:
            for attempt in range(3):
                broker = Mosquitto(tmp_path / "brokers" / f"{site}-{attempt}", name=f"{site}-broker")
                try:
                    await broker.start()
                except BrokerError:
                    # Another process may have bound the free port between the pick and mosquitto's bind.
                    if attempt == 2:
                        raise
                    continue
                started[site] = broker
                break
        yield started
    finally:
        for broker in started.values():
            await broker.stop()


KEYS: dict[str, Ed25519PrivateKey] = {name: generate_keypair()[0] for name in ("summit", "base", "archive")}
"""Each site's signing key (the topology carries the public halves)."""


def trust(topo: Topology, site: str) -> Trust:
    """``site``'s :class:`Trust` in ``topo``, with its key from :data:`KEYS`."""
    return Trust(topo, site, KEYS[site])


def mailbox(topo: Topology, site: str, on_message: MessageHandler) -> Mailbox:
    """A real :class:`Mailbox` of ``site`` (anonymous brokers: no account)."""
    return Mailbox(topo, site, on_message, trust=trust(topo, site), account=Account(username=None, password=None))


def opened(topo: Topology, site: str, kind: str, payload: bytes) -> bytes:
    """The body of a sealed message that arrived in ``site``'s mailbox, its signature checked."""
    return trust(topo, site).open(kind, payload).body


def topology(
    tmp_path: Path,
    *,
    broker_ports: Mapping[str, int] | None = None,
    http_ports: Mapping[str, int] | None = None,
    routes: Iterable[Route] = (PRIMARY, DIRECT),
    **tuning: Any,
) -> Topology:
    """Sites summit/base/archive on 127.0.0.1 with the given broker and HTTP ports (free ones otherwise).

    ``tuning`` overrides fields of :class:`~daemon.config.Tuning`. Sites that no route names are left out.
    """
    route_list = tuple(routes)
    named = {s for r in route_list for s in r.sites}
    broker_ports = dict(broker_ports or {})
    http_ports = dict(http_ports or {})
    sites: dict[str, SiteConfig] = {}
    for name in ("summit", "base", "archive"):
        if name not in named:
            continue
        state = tmp_path / name / "state"
        sites[name] = SiteConfig(
            name=name,
            role=ROLES[name],  # type: ignore[arg-type]
            broker=Endpoint(host="127.0.0.1", port=broker_ports.get(name) or free_port()),
            http_listen=Endpoint(host="127.0.0.1", port=http_ports.get(name) or free_port()),
            state_dir=state,
            inbox=tmp_path / name / "inbox" if name == "summit" else None,
            archive_root=tmp_path / name / "root" if name == "archive" else None,
            public_key=public_key_to_text(KEYS[name].public_key()),
        )
    return Topology(
        path=tmp_path / "topology.toml",
        sites=sites,
        links={},
        routes=route_list,
        tuning=dataclasses.replace(Tuning(), **tuning),
        token=TOKEN,
    )


# ---- running parts ------------------------------------------------------------------------


class _Done(Exception):
    """Ends a :func:`running` block's task group."""


@contextlib.asynccontextmanager
async def running() -> AsyncIterator[asyncio.TaskGroup]:
    """A task group for the parts' loops; they are cancelled when the block ends.

    An error in the block (a failed assertion) or in a task is raised as itself, not wrapped in a group.
    """
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
            raise _Done
    except BaseExceptionGroup as group:
        _, rest = group.split(_Done)
        if rest is None:
            return
        if len(rest.exceptions) == 1:
            raise rest.exceptions[0] from None
        raise rest from None


# ---- a subscriber -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One message as the subscriber saw it."""

    topic: str
    payload: bytes

    @property
    def data(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


class Subscriber:
    """Collects one topic filter on one broker in a persistent session; each message wakes waiters.

    ``on_message`` (optional) runs synchronously on arrival, to capture state at that instant.
    """

    def __init__(self, port: int, topic_filter: str, on_message: Callable[[Message], None] | None = None) -> None:
        self.port = port
        self.topic_filter = topic_filter
        self.messages: list[Message] = []
        self.on_message = on_message
        self._connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._id = f"part-subscriber-{uuid.uuid4().hex[:12]}"

    async def run(self) -> None:
        """Subscribe and collect until cancelled, reconnecting after a broker restart."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        while True:
            raise_if_cancelling()  # aiomqtt can swallow a cancel that lands as an inner wait ends
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self._id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=props,
                    keepalive=5,
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self._connected.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        received = Message(str(message.topic), payload)
                        self.messages.append(received)
                        if self.on_message is not None:
                            self.on_message(received)
                        async with self._changed:
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                pass
            self._connected.clear()
            await asyncio.sleep(0.05)  # pacing of reconnect attempts while the broker is away

    async def start(self, tg: asyncio.TaskGroup, timeout_s: float = 10.0) -> Subscriber:
        """Run in ``tg``; return once subscribed."""
        tg.create_task(self.run(), name=f"subscriber {self.topic_filter}")
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()
        return self

    async def wait_for(self, predicate: Callable[[list[Message]], bool], timeout_s: float) -> list[Message]:
        """Wait until ``predicate(messages so far)`` holds; AssertionError (listing them) after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.messages))
        except TimeoutError:
            seen = [m.payload[:160].decode("utf-8", "replace") for m in self.messages[-8:]]
            raise AssertionError(
                f"{self.topic_filter}: not seen within {timeout_s}s; {len(self.messages)} message(s): {seen}"
            ) from None
        return list(self.messages)

    async def wait_count(self, count: int, timeout_s: float) -> list[Message]:
        """Wait for at least ``count`` messages."""
        return await self.wait_for(lambda msgs: len(msgs) >= count, timeout_s)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Decoded problems/events whose ``kind`` is ``kind``."""
        return [m.data for m in self.messages if m.data.get("kind") == kind]


def has_kind(kind: str, count: int = 1) -> Callable[[list[Message]], bool]:
    """A predicate: at least ``count`` problems/events of ``kind`` arrived."""
    return lambda msgs: sum(1 for m in msgs if m.data.get("kind") == kind) >= count


# ---- wiring as the site does it -----------------------------------------------------------


def report_publisher(
    journal: Journal, mailbox: Mailbox, *, marked: Callable[[list[int]], None] | None = None
) -> LogPublisher[journal_reports.ReportRow]:
    """Publishes the journal's problems and events on the site's own broker (``daemon.site``'s wiring);
    ``marked`` is told the sequence numbers of each batch once the journal has marked it published."""

    async def fetch(limit: int) -> list[journal_reports.ReportRow]:
        return await journal.read(journal_reports.unpublished, limit)

    async def mark(rows: Iterable[journal_reports.ReportRow]) -> None:
        seqs = [r.seq for r in rows]
        await journal.write(journal_reports.mark_published, seqs)
        if marked is not None:
            marked(seqs)

    tuning = mailbox.tuning
    return LogPublisher(
        "reports",
        fetch=fetch,
        mark=mark,
        publish=mailbox.publish_local,
        connected=mailbox.wait_local,
        initial_backoff_s=tuning.backoff_initial_s,
        max_backoff_s=tuning.backoff_max_s,
    )


async def open_journal(path: Path) -> Journal:
    """An opened (migrated) journal at ``path``."""
    journal = Journal(path)
    await journal.open()
    return journal


async def hold_file(
    journal: Journal, directory: Path, *, name: str, data: bytes, route: Route, hop: int = 0
) -> tuple[TransferRow, FileRow]:
    """Write ``data`` under ``directory`` and journal it as held, with a pending transfer along ``route``."""
    path = directory / name
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, data)
    checksum = checksum_of(data)
    key = f"{checksum}/{name}"

    def record(db: sqlite3.Connection) -> tuple[TransferRow, FileRow]:
        journal_files.insert_file(
            db,
            file_key=key,
            name=name,
            size=len(data),
            checksum=checksum,
            closed_at=1.0e9,
            local_path=str(path),
            source="inbox",
            mtime_ns=0,
        )
        transfer = journal_files.insert_transfer(
            db, transfer_id=new_id("t"), file_key=key, route=route.name, route_sites=route.sites, hop=hop
        )
        row = journal_files.file(db, key)
        assert row is not None
        return transfer, row

    return await journal.transaction(record)


async def transfers_of(journal: Journal, file_key: str) -> list[tuple[str, str, str]]:
    """(route, state, receiver) of every transfer of a file, oldest first."""
    rows = await journal.read(journal_files.transfers_of, file_key)
    return [(t.route, t.state, t.receiver) for t in rows]


async def publish_once(port: int, topic: str, payload: bytes) -> None:
    """Publish one QoS 1 message on a broker, as another site's daemon would."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"part-publisher-{uuid.uuid4().hex[:12]}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.publish(topic, payload, qos=1)


make_mailbox = mailbox
"""The name the part tests use (their own variables are called ``mailbox``)."""
