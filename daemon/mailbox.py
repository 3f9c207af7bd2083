"""MQTT: the site's own mailbox, and one publishing link into each peer's mailbox.

A daemon subscribes only to its own broker and delivers a message by publishing into the
addressed site's broker over the link between the sites (DESIGN §2). The state of each link's
connection is health evidence: a cut link drops the connection at once. Each link also carries
presence: our ``online`` (retained) with an ``offline`` last will on the peer's broker, and the
peer's own presence, which we watch.

Messages for a peer that queue while the previous publish to it awaits the broker's PUBACK go out
together, in one signed batch (:mod:`protocol.batch`): under load one publish and one signature carry
many offers, acks or custody hops, and a lone message still goes at once, alone. A retry (attempt > 1)
always goes alone on its own kind's topic, so a peer or broker ACL that does not know batches still
gets every message, late.

Everything this site sends into a mailbox, and its presence, is sealed with the site's key
(:mod:`daemon.trust`); a peer's presence counts only when the peer signed it. The daemon logs in with
its own account, and its client ids carry a secret derived from that account's password, so no other
account can take them over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.aio import raise_if_cancelling
from daemon.backoff import backoff_delay
from daemon.config import Endpoint, Topology
from daemon.credentials import secret_client_id
from daemon.errors import PeerUnreachable
from daemon.trust import Trust
from protocol import topics
from protocol.batch import BATCH_KINDS, MAX_BATCH_MESSAGES, batch_room, encode_batch, entry_bytes
from protocol.errors import ProtocolError
from protocol.presence import Presence
from protocol.signing import SignatureError

log = structlog.get_logger()

MessageHandler = Callable[[str, bytes], Awaitable[None]]
Rejected = Callable[[str, str, bytes, str], Awaitable[None]]
"""Called with (topic, reason, payload, problem kind) for a message this mailbox refused to act on."""
PeerListener = Callable[[str, bool], None]
SESSION_EXPIRY_S = 3600
OWN_PRESENCES_KEPT = 64
"""How many of this run's own presence payloads are recognised when the broker hands them back."""
RECONNECT_CAP_S = 5.0


@dataclasses.dataclass(slots=True, eq=False)
class _Queued:
    """A message waiting for its peer's flusher; ``done`` resolves when the broker acknowledged it."""

    kind: str
    body: bytes
    done: asyncio.Future[None]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The broker account a daemon logs in with (the same on its own broker and its peers')."""

    username: str | None
    password: str | None

    def client_id(self, purpose: str) -> str:
        """A client id for one connection; secret when the account has a password."""
        if self.username and self.password:
            return secret_client_id(self.username, self.password, purpose)
        return f"skyrelay-{purpose}"


def daemon_account(topology: Topology, site: str) -> Account:
    """The site daemon's own account, or the topology's shared one (a topology from before accounts) (blocking)."""
    cfg = topology.sites[site]
    if cfg.mqtt_password_file is not None:
        return Account(
            username=cfg.mqtt_username or f"site-{site}", password=cfg.mqtt_password_file.read_text().strip()
        )
    return Account(username=topology.mqtt_username, password=topology.mqtt_password)


class Mailbox:
    """Own-broker subscriber plus per-peer publishers, each reconnecting with capped jittered backoff."""

    def __init__(
        self,
        topology: Topology,
        site: str,
        on_message: MessageHandler,
        *,
        trust: Trust,
        account: Account,
        on_rejected: Rejected | None = None,
    ) -> None:
        self.topology = topology
        self.site = site
        self.trust = trust
        self.account = account
        self._on_rejected = on_rejected
        self.tuning = topology.tuning
        self._on_message = on_message
        self._local: aiomqtt.Client | None = None
        self._peers: dict[str, aiomqtt.Client | None] = {p: None for p in topology.peers(site)}
        self.peer_online: dict[str, bool] = {p: False for p in self._peers}
        self.peer_unreachable: dict[str, frozenset[str]] = {p: frozenset() for p in self._peers}
        self._own_presences: deque[bytes] = deque(maxlen=OWN_PRESENCES_KEPT)
        self._latest_own: bytes | None = None
        self._peer_presence_at: dict[str, float] = {}
        self._leaving = False
        self._started_at = time.time()
        self.local_ready = asyncio.Event()
        self._listeners: list[PeerListener] = []
        # A link that comes back should be noticed within seconds, whatever the delivery backoff is.
        self._reconnect_cap_s = min(RECONNECT_CAP_S, self.tuning.backoff_max_s)
        self._batch_max = max(1, min(self.tuning.max_batch_messages, MAX_BATCH_MESSAGES))
        self._outbox: dict[str, deque[_Queued]] = {}
        """Per peer, messages that may travel in a batch, for the peer's flusher (once :meth:`run` started it)."""
        self._outbox_wake: dict[str, asyncio.Event] = {}
        self.publishes: collections.Counter[str] = collections.Counter()
        """MQTT publishes into each peer's mailbox."""
        self.messages_sent: collections.Counter[str] = collections.Counter()
        """Messages delivered into each peer's mailbox (more than publishes when batches carried them)."""

    @property
    def peers(self) -> tuple[str, ...]:
        """The sites this mailbox links to."""
        return tuple(self._peers)

    def add_peer_listener(self, listener: PeerListener) -> None:
        """Call ``listener(peer, connected)`` whenever a link connects or drops."""
        self._listeners.append(listener)

    def connected(self, peer: str) -> bool:
        """Whether the link into ``peer``'s mailbox is up now."""
        return self._peers.get(peer) is not None

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Start the own-mailbox loop and one loop per peer link inside ``tg``."""
        tg.create_task(self._own_loop(), name=f"{self.site}.mailbox")
        for peer in self._peers:
            tg.create_task(self._peer_loop(peer), name=f"{self.site}.link.{peer}")
            if self._batch_max > 1:
                self._outbox[peer] = deque()
                self._outbox_wake[peer] = asyncio.Event()
                tg.create_task(self._flusher(peer), name=f"{self.site}.flush.{peer}")

    def _presence(self, state: str, unreachable: tuple[str, ...] = ()) -> bytes:
        """This site's signed presence."""
        body = Presence(site=self.site, state=state, at=time.time(), unreachable=unreachable).to_json()  # type: ignore[arg-type]
        sealed = self.trust.seal("presence", "", body)
        self._own_presences.append(sealed)
        return sealed

    def _client(self, endpoint: Endpoint, purpose: str) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        return aiomqtt.Client(
            endpoint.host,
            endpoint.port,
            identifier=self.account.client_id(purpose),
            protocol=aiomqtt.ProtocolVersion.V5,
            username=self.account.username,
            password=self.account.password,
            will=aiomqtt.Will(topics.presence(self.site), self._presence("offline"), qos=1, retain=True),
            keepalive=self.tuning.mqtt_keepalive_s,
            clean_start=False,
            properties=props,
            tls_context=self.topology.mqtt_tls_context() if endpoint.tls else None,
            timeout=self.tuning.publish_timeout_s,
        )

    async def _own_loop(self) -> None:
        me = self.topology.sites[self.site]
        attempt = 0
        while True:
            raise_if_cancelling()
            delay = self.tuning.backoff_initial_s
            try:
                async with self._client(me.broker, "own") as client:
                    await client.subscribe(topics.site_wildcard(self.site), qos=1)
                    await client.subscribe(topics.presence(self.site), qos=1)
                    # Register the client before announcing: a link that comes up meanwhile announces through
                    # it too, and one connection delivers the announcements in order (the newest wins).
                    self._local = client
                    await client.publish(topics.presence(self.site), self._own_presence(), qos=1, retain=True)
                    await self._unless_leaving(client)
                    self.local_ready.set()
                    attempt = 0
                    log.info("mailbox_connected", broker=str(me.broker))
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        if str(message.topic) == topics.presence(self.site):
                            if not message.retain:  # the stored one is replaced by our announcement anyway
                                await self._guard_own_presence(payload)
                        else:
                            await self._on_message(str(message.topic), payload)
                        raise_if_cancelling()  # a publish above may have swallowed our cancellation
            except aiomqtt.MqttError as exc:
                attempt += 1
                delay = backoff_delay(attempt, initial_s=self.tuning.backoff_initial_s, cap_s=self._reconnect_cap_s)
                log.warning("mailbox_disconnected", broker=str(me.broker), error=str(exc), retry_in_s=round(delay, 2))
            finally:
                self._local = None
                self.local_ready.clear()
            await asyncio.sleep(delay)

    async def _peer_loop(self, peer: str) -> None:
        link = self.topology.link(self.site, peer)
        attempt = 0
        while True:
            raise_if_cancelling()
            delay = self.tuning.backoff_initial_s
            try:
                async with self._client(link.broker, f"to-{peer}") as client:
                    await client.subscribe(topics.presence(peer), qos=1)
                    await client.publish(topics.presence(self.site), self._presence("online"), qos=1, retain=True)
                    await self._unless_leaving(client)
                    self._peers[peer] = client
                    attempt = 0
                    log.info("link_connected", peer=peer, broker=str(link.broker))
                    self._notify(peer, True)
                    await self._announce()
                    async for message in client.messages:
                        await self._on_presence(peer, message.payload)
                        raise_if_cancelling()
            except aiomqtt.MqttError as exc:
                attempt += 1
                delay = backoff_delay(attempt, initial_s=self.tuning.backoff_initial_s, cap_s=self._reconnect_cap_s)
                log.warning("link_down", peer=peer, broker=str(link.broker), error=str(exc), retry_in_s=round(delay, 2))
            finally:
                was_up = self._peers.get(peer) is not None
                self._peers[peer] = None
                self.peer_online[peer] = False
                if was_up:
                    self._notify(peer, False)
                    if not _cancelling():
                        await self._announce()
            await asyncio.sleep(delay)

    def unreachable(self) -> tuple[str, ...]:
        """Peers whose mailbox this site cannot reach now."""
        return tuple(sorted(p for p, client in self._peers.items() if client is None))

    def _own_presence(self) -> bytes:
        """A fresh presence for our own broker, remembered as the one the broker must hold."""
        self._latest_own = self._presence("online", self.unreachable())
        return self._latest_own

    async def _announce(self) -> None:
        """Republish our presence on our own broker: peers read which sites we can reach from it."""
        if self._leaving:
            return  # (after goodbye our offline presence stands: a link coming up while we stop says nothing)
        await self.publish_local(topics.presence(self.site), self._own_presence(), retain=True)

    async def _unless_leaving(self, client: aiomqtt.Client) -> None:
        """After a connection announced us online: if :meth:`goodbye` began meanwhile (it did not know this
        client yet), say ``offline`` on it too, so that the last presence we leave there is the goodbye."""
        if self._leaving:
            await self._say_offline(client)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topics.presence(self.site), self._presence("offline"), qos=1, retain=True, timeout=1.0)

    async def _guard_own_presence(self, payload: bytes) -> None:
        """Our retained presence on our own broker is ours: put our latest back when it was replaced (a forgery,
        or an old presence of ours replayed), so that a peer connecting later reads the current one. Our own
        earlier publishes come back too; republishing the same latest bytes makes that converge."""
        latest = self._latest_own
        if latest is None or payload == latest or self._leaving:
            return  # (after goodbye our offline presence stands)
        if payload in self._own_presences:
            pass  # an earlier publish of this run, coming back
        elif self._from_earlier_run(payload):
            # Our previous incarnation's last will (or presence) that the broker hands over after a crash
            # or a restart: ours, not a problem; the current one is put back all the same.
            log.info("own_earlier_presence_replaced", payload_bytes=len(payload))
        else:
            log.warning("own_presence_replaced", payload_bytes=len(payload))
            if self._on_rejected is not None:
                reason = "our retained presence was replaced; ours is put back"
                await self._on_rejected(topics.presence(self.site), reason, payload, "presence_replaced")
        await self.publish_local(topics.presence(self.site), latest, retain=True)

    def _from_earlier_run(self, payload: bytes) -> bool:
        """Whether ``payload`` is a presence this site signed before this run started (its last run's)."""
        try:
            presence = Presence.from_json(self.trust.open_presence(self.site, payload).body)
        except (ProtocolError, SignatureError):
            return False
        return presence.site == self.site and presence.at < self._started_at

    async def _on_presence(self, peer: str, payload: object) -> None:
        if not isinstance(payload, bytes):
            return
        try:
            presence = Presence.from_json(self.trust.open_presence(peer, payload).body)
            if presence.site != peer:
                raise ProtocolError(f"presence of {presence.site!r} on the topic of {peer!r}", field="site")
            last_at = self._peer_presence_at.get(peer)
            if presence.state == "online" and last_at is not None and presence.at < last_at:
                # An older signed presence replayed (an offline will carries its connection's time: exempt).
                raise ProtocolError(f"presence of {peer} from {presence.at:.3f}, older than {last_at:.3f}", field="at")
        except ProtocolError as exc:
            log.warning("bad_presence", peer=peer, error=str(exc))
            if self._on_rejected is not None:
                signed_wrong = isinstance(exc, SignatureError) and exc.reason != "malformed"
                kind = "bad_signature" if signed_wrong else "bad_message"
                await self._on_rejected(topics.presence(peer), str(exc), payload, kind)
            return
        online = presence.state == "online"
        if online:
            self._peer_presence_at[peer] = presence.at
        unreachable = frozenset(presence.unreachable) if online else frozenset()
        if self.peer_unreachable.get(peer) != unreachable:
            self.peer_unreachable[peer] = unreachable
            log.info("peer_reach", peer=peer, unreachable=sorted(unreachable))
            if self.peer_online.get(peer) == online:
                self._notify(peer, self.connected(peer))
        if self.peer_online.get(peer) != online:
            self.peer_online[peer] = online
            log.info("peer_presence", peer=peer, state=presence.state)
            self._notify(peer, self.connected(peer))

    def _notify(self, peer: str, up: bool) -> None:
        for listener in self._listeners:
            listener(peer, up)

    async def send(self, peer: str, kind: topics.SiteTopicKind, payload: bytes, *, alone: bool = False) -> None:
        """Publish into ``peer``'s mailbox (QoS 1, waiting for the broker's PUBACK).

        Offers, acks and custody hops may share a batch with others queued for the same peer meanwhile;
        ``alone`` (for retries) sends this one by itself on its own kind's topic.

        Raises:
            PeerUnreachable: the link is down or the broker did not acknowledge in time.
        """
        client = self._peers.get(peer)
        if client is None:
            raise PeerUnreachable(f"no connection to {peer}'s mailbox")
        queue = self._outbox.get(peer)
        if alone or queue is None or kind not in BATCH_KINDS:
            await self._publish(peer, client, kind, self.trust.seal(kind, peer, payload), 1)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(_Queued(kind, payload, done))
        self._outbox_wake[peer].set()
        # The batch's publish has its own timeout; this bound only makes sure no sender ever waits forever.
        try:
            async with asyncio.timeout(2 * self.tuning.publish_timeout_s + 1.0):
                await done
        except TimeoutError:
            raise PeerUnreachable(f"publish to {peer} did not complete") from None

    async def _publish(self, peer: str, client: aiomqtt.Client, kind: str, sealed: bytes, messages: int) -> None:
        try:
            await client.publish(
                topics.site(peer, kind),  # type: ignore[arg-type]
                sealed,
                qos=1,
                timeout=self.tuning.publish_timeout_s,
            )
        except aiomqtt.MqttError as exc:
            raise PeerUnreachable(f"publish to {peer} failed: {exc}") from exc
        self.publishes[peer] += 1
        self.messages_sent[peer] += messages

    async def _flusher(self, peer: str) -> None:
        """Publish what queued for ``peer``: one message alone, several in one batch; until cancelled."""
        queue, wake = self._outbox[peer], self._outbox_wake[peer]
        room = batch_room()
        try:
            while True:
                raise_if_cancelling()  # a publish may have swallowed our cancellation (asyncio.wait_for in 3.11)
                await wake.wait()
                wake.clear()
                await asyncio.sleep(0)  # let the senders that are ready in this turn of the loop join in
                while queue:
                    taken: list[_Queued] = []
                    used = 0
                    while queue and len(taken) < self._batch_max:
                        entry = queue[0]
                        if entry.done.done():  # its sender gave up (cancelled)
                            queue.popleft()
                            continue
                        size = entry_bytes(entry.body)
                        if taken and used + size > room:
                            break
                        taken.append(queue.popleft())
                        used += size
                    if taken:
                        await self._flush(peer, taken)
                        raise_if_cancelling()
        finally:
            for entry in queue:
                if not entry.done.done():
                    entry.done.set_exception(PeerUnreachable(f"mailbox link to {peer} stopped"))
            queue.clear()

    async def _flush(self, peer: str, taken: list[_Queued]) -> None:
        client = self._peers.get(peer)
        try:
            if client is None:
                raise PeerUnreachable(f"no connection to {peer}'s mailbox")
            if len(taken) == 1:
                only = taken[0]
                await self._publish(peer, client, only.kind, self.trust.seal(only.kind, peer, only.body), 1)
            else:
                body = encode_batch([(e.kind, e.body) for e in taken])
                await self._publish(peer, client, "batch", self.trust.seal("batch", peer, body), len(taken))
        except Exception as exc:  # the flusher outlives any one publish: every sender hears of its failure
            if not isinstance(exc, PeerUnreachable):
                log.error("batch_publish_failed", peer=peer, messages=len(taken), error=repr(exc))
            failure = exc if isinstance(exc, PeerUnreachable) else PeerUnreachable(f"cannot publish to {peer}: {exc}")
            for entry in taken:
                if not entry.done.done():
                    entry.done.set_exception(failure)
            return
        for entry in taken:
            if not entry.done.done():
                entry.done.set_result(None)

    async def publish_local(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish on the site's own broker (notices, problems, events); False when it is down."""
        client = self._local
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=self.tuning.publish_timeout_s)
        except aiomqtt.MqttError as exc:
            log.warning("local_publish_failed", topic=topic, error=str(exc))
            return False
        return True

    async def wait_local(self) -> None:
        """Wait until the own mailbox is connected."""
        await self.local_ready.wait()

    async def goodbye(self) -> None:
        """Publish ``offline`` presence on every connected broker before a clean shutdown."""
        self._leaving = True  # (from now on a connection that comes up says offline too: _unless_leaving)
        for client in [*self._peers.values(), self._local]:
            if client is not None:
                await self._say_offline(client)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
