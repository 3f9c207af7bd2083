"""Broker accounts and ACLs, tried against real mosquitto brokers: each account can do its job and nothing more."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.client import ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ops.accounts import (
    Account,
    AccountPlan,
    AccountsError,
    SiteSpec,
    acl_text,
    hash_password,
    plan_accounts,
    verify_password,
    write_broker_auth,
)
from ops.broker import Mosquitto, mosquitto_binary
from protocol import topics

TRIANGLE = (
    SiteSpec(name="summit", role="summit", peers=("base", "archive")),
    SiteSpec(name="base", role="relay", peers=("summit", "archive")),
    SiteSpec(name="archive", role="archive", peers=("summit", "base")),
)
CHAIN = (
    SiteSpec(name="summit", role="summit", peers=("base",)),
    SiteSpec(name="base", role="relay", peers=("summit", "archive")),
    SiteSpec(name="archive", role="archive", peers=("base",)),
)
ARRIVAL = topics.arrivals("LSSTCam", "R22_S11")
NOT_AUTHORIZED = "Not authorized"
ALLOWED = {"Success", "No matching subscribers"}  # PUBACK of an accepted publish

StartBroker = Callable[[AccountPlan, str], Awaitable[Mosquitto]]


@pytest.fixture
async def brokers(tmp_path: Path) -> AsyncIterator[StartBroker]:
    """Start a site's authenticated broker for a plan; every broker started is stopped afterwards."""
    mosquitto_binary()
    started: list[Mosquitto] = []

    async def start(plan: AccountPlan, site: str) -> Mosquitto:
        auth = write_broker_auth(plan, site, tmp_path / site / "auth")
        broker = Mosquitto(tmp_path / site / "broker", name=f"{site}.broker", auth=auth)
        started.append(broker)
        await broker.start()
        return broker

    yield start
    for broker in started:
        await broker.stop()


def client(
    broker: Mosquitto,
    account: Account | None,
    *,
    identifier: str | None = None,
    will: aiomqtt.Will | None = None,
    password: str | None = None,
) -> aiomqtt.Client:
    """An MQTT v5 client of ``broker`` logged in as ``account`` (anonymous when None)."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=account.username if account else None,
        password=password if password is not None else (account.password if account else None),
        will=will,
        timeout=5,
    )


class Probe:
    """A paho MQTT v5 client on its own thread that reports the broker's CONNACK, PUBACK and DISCONNECT codes."""

    def __init__(self, broker: Mosquitto, account: Account, *, will_topic: str | None = None) -> None:
        self.connack = self.puback = self.dropped_because = ""
        self._connected, self._acked, self._dropped = threading.Event(), threading.Event(), threading.Event()
        self.mqtt = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.mqtt.username_pw_set(account.username, account.password)
        if will_topic is not None:
            self.mqtt.will_set(will_topic, b"offline", qos=1)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.loop_start()
        assert self._connected.wait(5), "no CONNACK"

    def _on_connect(self, _c: paho.Client, _u: object, _f: ConnectFlags, rc: ReasonCode, _p: Properties | None) -> None:
        self.connack = str(rc)
        self._connected.set()

    def _on_publish(self, _c: paho.Client, _u: object, _mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        self.puback = str(rc)
        self._acked.set()

    def _on_disconnect(
        self, _c: paho.Client, _u: object, _f: DisconnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.dropped_because = str(rc)
        self._dropped.set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        self.mqtt.publish(topic, payload, qos=1, retain=retain)
        assert self._acked.wait(5), "no PUBACK"
        return self.puback

    def publish_until_dropped(self, topic: str, payload: bytes) -> str:
        """Publish at QoS 1 and return why the broker closed the connection."""
        self.mqtt.publish(topic, payload, qos=1)
        assert self._dropped.wait(10), "the broker kept the connection"
        return self.dropped_because

    def leave_with_will(self) -> None:
        """Disconnect asking the broker to publish the will (MQTT v5 reason code 4)."""
        self.mqtt.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))

    def close(self) -> None:
        """Disconnect (if still connected) and stop the network thread."""
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def _publish_reason(broker: Mosquitto, account: Account, topic: str, payload: bytes, retain: bool) -> str:
    probe = Probe(broker, account)
    try:
        assert probe.connack == "Success", probe.connack
        return probe.publish(topic, payload, retain=retain)
    finally:
        probe.close()


async def publish_reason(broker: Mosquitto, account: Account, topic: str, payload: bytes = b"x", *,
                         retain: bool = False) -> str:  # fmt: skip
    """The PUBACK reason code mosquitto gives ``account`` publishing to ``topic``."""
    return await asyncio.to_thread(_publish_reason, broker, account, topic, payload, retain)


async def seen_until_sentinel(observer: aiomqtt.Client) -> list[str]:
    """Topics ``observer`` receives up to and including the sentinel message."""
    seen: list[str] = []
    async with asyncio.timeout(10):
        async for message in observer.messages:
            seen.append(str(message.topic))
            if message.payload == b"sentinel":
                return seen
    raise AssertionError("unreachable")  # pragma: no cover


async def test_anonymous_clients_and_wrong_passwords_are_refused(brokers: StartBroker) -> None:
    """No account, or a right username with a wrong password, cannot connect; the right password can."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with client(archive, None):
            pass
    with pytest.raises(aiomqtt.MqttError, match=r"Bad user name or password|Not authorized"):
        async with client(archive, plan.subscribers[0], password="guess"):
            pass
    async with client(archive, plan.subscribers[0]) as ok:
        assert ok.identifier is not None


async def test_a_site_without_a_link_cannot_log_in_to_a_broker(brokers: StartBroker) -> None:
    """In a chain summit-base-archive the summit's daemon has no account on the archive's broker."""
    plan = plan_accounts(CHAIN)
    archive = await brokers(plan, "archive")
    with pytest.raises(aiomqtt.MqttError, match=r"Bad user name or password|Not authorized"):
        async with client(archive, plan.daemons["summit"]):
            pass
    async with client(archive, plan.daemons["base"]):
        pass


async def test_a_subscriber_reads_arrivals_but_nothing_it_publishes_is_delivered(
    brokers: StartBroker,
) -> None:
    """The subscriber receives an arrival; its custody, control, presence and arrival publishes get
    PUBACK "Not authorized" and reach neither the archive daemon nor an operator reading everything."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    subscriber, operator, daemon = plan.subscribers[0], plan.operators[0], plan.daemons["archive"]
    async with (
        client(archive, subscriber) as reader,
        client(archive, operator) as observer,
        client(archive, daemon) as archive_daemon,
    ):
        await reader.subscribe(f"{topics.PREFIX}/arrivals/#", qos=1)
        await observer.subscribe(f"{topics.PREFIX}/#", qos=1)
        await archive_daemon.subscribe(topics.site_wildcard("archive"), qos=1)
        await archive_daemon.publish(ARRIVAL, b"an arrival", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(reader.messages))
        assert (str(message.topic), message.payload) == (ARRIVAL, b"an arrival")

        forged = [
            topics.site("archive", "custody"),
            topics.site("archive", "control"),
            topics.site("archive", "offer"),
            topics.presence("archive"),
            topics.presence("base"),
            ARRIVAL,
            topics.problems("archive"),
        ]
        for topic in forged:
            assert await publish_reason(archive, subscriber, topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
        await archive_daemon.publish(topics.events("archive"), b"sentinel", qos=1)
        assert await seen_until_sentinel(observer) == [ARRIVAL, topics.events("archive")]
        await observer.publish(topics.site("archive", "control"), b"sentinel", qos=1)
        assert await seen_until_sentinel(archive_daemon) == [topics.site("archive", "control")]
    async with client(archive, operator) as late:  # nothing forged was retained either
        await late.subscribe(f"{topics.PREFIX}/#", qos=1)
        async with client(archive, daemon) as archive_daemon:
            await archive_daemon.publish(topics.events("archive"), b"sentinel", qos=1)
        assert await seen_until_sentinel(late) == [topics.events("archive")]


async def test_a_subscriber_cannot_read_sys_or_mailboxes(brokers: StartBroker) -> None:
    """Subscribed to ``#`` and ``$SYS/#``, the subscriber gets presence and arrivals but no $SYS and no
    mailbox offer; the same subscription on an anonymous broker does deliver $SYS (the check can see it)."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    async with client(archive, plan.subscribers[0]) as reader:
        await reader.subscribe("#", qos=1)
        await reader.subscribe("$SYS/#", qos=1)
        assert await publish_reason(archive, plan.daemons["base"], topics.site("archive", "offer"), b"o") in ALLOWED
        async with client(archive, plan.daemons["archive"]) as daemon:
            await daemon.publish(topics.presence("archive"), b"online", qos=1)
            await daemon.publish(ARRIVAL, b"sentinel", qos=1)
        assert await seen_until_sentinel(reader) == [topics.presence("archive"), ARRIVAL]

    open_broker = Mosquitto(archive.workdir.parent.parent / "open" / "broker", name="open.broker")
    await open_broker.start()
    try:
        async with client(open_broker, None) as reader:
            await reader.subscribe("$SYS/#", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(reader.messages))
            assert str(message.topic).startswith("$SYS/")
    finally:
        await open_broker.stop()


async def test_a_daemon_may_speak_only_as_itself(brokers: StartBroker) -> None:
    """site-base cannot publish presence/archive or control anywhere; it can offer into the archive's
    mailbox and announce its own presence there; the operator can publish control."""
    plan = plan_accounts(TRIANGLE)
    archive, base = await brokers(plan, "archive"), await brokers(plan, "base")
    site_base, operator = plan.daemons["base"], plan.operators[0]
    assert await publish_reason(archive, site_base, topics.presence("archive")) == NOT_AUTHORIZED
    assert await publish_reason(archive, site_base, topics.site("archive", "control")) == NOT_AUTHORIZED
    assert await publish_reason(archive, site_base, topics.site("summit", "offer")) == NOT_AUTHORIZED
    assert await publish_reason(archive, site_base, ARRIVAL) == NOT_AUTHORIZED
    assert await publish_reason(base, site_base, topics.presence("archive")) == NOT_AUTHORIZED
    assert await publish_reason(base, site_base, topics.site("base", "control")) == NOT_AUTHORIZED
    assert await publish_reason(base, site_base, topics.site("base", "offer")) == NOT_AUTHORIZED
    assert await publish_reason(archive, site_base, topics.site("archive", "offer")) in ALLOWED
    assert await publish_reason(archive, site_base, topics.presence("base")) in ALLOWED
    assert await publish_reason(base, site_base, topics.presence("base")) in ALLOWED
    assert await publish_reason(base, site_base, topics.events("base")) in ALLOWED
    assert await publish_reason(base, operator, topics.site("base", "control")) in ALLOWED
    assert await publish_reason(base, operator, topics.site("base", "custody")) == NOT_AUTHORIZED
    assert await publish_reason(archive, plan.daemons["archive"], topics.exposures("LSSTCam")) in ALLOWED


def _connect_with_will(broker: Mosquitto, account: Account, will_topic: str) -> str:
    """Connect with an ``offline`` will on ``will_topic``, then leave asking for the will; return the CONNACK."""
    probe = Probe(broker, account, will_topic=will_topic)
    try:
        if probe.connack == "Success":
            probe.leave_with_will()
        return probe.connack
    finally:
        probe.mqtt.loop_stop()


async def test_a_peer_connects_with_its_presence_will_and_the_will_reaches_the_owner(
    brokers: StartBroker,
) -> None:
    """site-base on the archive's broker may leave an ``offline`` will on presence/base, which the archive's
    daemon reads; a will on presence/archive is never delivered."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    async with client(archive, plan.daemons["archive"]) as owner:
        await owner.subscribe(f"{topics.PREFIX}/presence/+", qos=1)
        await owner.subscribe(topics.site_wildcard("archive"), qos=1)
        outcomes = {
            topic: await asyncio.to_thread(_connect_with_will, archive, plan.daemons["base"], topic)
            for topic in (topics.presence("archive"), topics.presence("base"))
        }
        assert outcomes[topics.presence("base")] == "Success"
        async with client(archive, plan.daemons["base"]) as base:
            await base.publish(topics.site("archive", "offer"), b"sentinel", qos=1)
        assert await seen_until_sentinel(owner) == [topics.presence("base"), topics.site("archive", "offer")]
        print(f"\nconnect with a will on presence/archive: {outcomes[topics.presence('archive')]}")


async def test_another_account_cannot_take_over_a_daemons_connection(
    brokers: StartBroker,
) -> None:
    """With its secret client id the archive daemon stays connected while other accounts connect with every
    id they can guess; the same attack on a guessable id does drop the victim (so the check can fail)."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    daemon = plan.daemons["archive"]
    secret_id = daemon.client_id("own")
    assert secret_id.startswith("site-archive-own-") and len(secret_id) == len("site-archive-own-") + 24
    assert secret_id != plan_accounts(TRIANGLE).daemons["archive"].client_id("own")
    guesses = ["skyrelay-archive", "site-archive", "site-archive-own", "site-archive-own-" + "0" * 24]
    async with client(archive, daemon, identifier=secret_id) as victim:
        await victim.subscribe(topics.site_wildcard("archive"), qos=1)
        for attacker in (plan.subscribers[0], plan.daemons["base"], plan.operators[0]):
            for guess in guesses:
                async with client(archive, attacker, identifier=guess):
                    pass
        await publish_reason(archive, plan.daemons["base"], topics.site("archive", "offer"), b"sentinel")
        assert await seen_until_sentinel(victim) == [topics.site("archive", "offer")]

    async with client(archive, daemon, identifier="skyrelay-archive") as guessable:
        await guessable.subscribe(topics.site_wildcard("archive"), qos=1)
        async with client(archive, plan.subscribers[0], identifier="skyrelay-archive"):
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _message in guessable.messages:
                        pass


def _publish_until_dropped(broker: Mosquitto, account: Account, topic: str, payload: bytes) -> str:
    probe = Probe(broker, account)
    try:
        return probe.publish_until_dropped(topic, payload)
    finally:
        probe.mqtt.loop_stop()


async def test_a_packet_larger_than_the_limit_is_refused_by_the_broker(brokers: StartBroker) -> None:
    """A publish larger than max_packet_size closes the sender's connection and never reaches the mailbox's
    owner; a normal publish from the same account afterwards does."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    async with client(archive, plan.daemons["archive"]) as owner:
        await owner.subscribe(topics.site_wildcard("archive"), qos=1)
        oversized = b"x" * (archive.max_packet_bytes + 1)
        reason = await asyncio.to_thread(_publish_until_dropped, archive, plan.daemons["base"],
                                         topics.site("archive", "offer"), oversized)  # fmt: skip
        assert reason != "Success"
        assert await publish_reason(archive, plan.daemons["base"], topics.site("archive", "offer"), b"sentinel") in (
            ALLOWED
        )
        assert await seen_until_sentinel(owner) == [topics.site("archive", "offer")]
        print(f"\noversized publish: connection closed ({reason})")


async def test_a_reloaded_broker_admits_a_new_account(brokers: StartBroker) -> None:
    """Rewriting the files and sending SIGHUP lets a new subscriber in without restarting the broker."""
    plan = plan_accounts(TRIANGLE)
    archive = await brokers(plan, "archive")
    bigger = plan_accounts(TRIANGLE, subscribers=("subscriber", "alerts-broker"), passwords=plan.passwords())
    newcomer = bigger.subscribers[1]
    with pytest.raises(aiomqtt.MqttError):
        async with client(archive, newcomer):
            pass
    write_broker_auth(bigger, "archive", archive.workdir.parent / "auth")
    archive.reload()
    async with asyncio.timeout(10):
        while True:
            try:
                async with client(archive, newcomer):
                    break
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker re-reads its files on its next loop
    async with client(archive, plan.subscribers[0]):  # kept password still works
        pass


def test_our_password_hashes_are_mosquittos_format(tmp_path: Path) -> None:
    """A hash made by mosquitto_passwd verifies with our checker, and ours has its exact shape."""
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret"], check=True, capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", theirs) and not verify_password("s3cre", theirs)
    ours = hash_password("s3cret", salt=b"\x00" * 12)
    assert ours.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(ours.split("$")[4]) == 88
    assert verify_password("s3cret", ours)
    assert not verify_password("s3cret", "$7$101$!!$!!")


def test_each_broker_knows_only_its_own_peers() -> None:
    """In a chain the archive's ACL names base but not summit, and grants the subscriber no write at all."""
    plan = plan_accounts(CHAIN)
    text = acl_text(plan, "archive")
    assert "user site-base" in text and "user site-summit" not in text
    subscriber_block = text.split("user subscriber\n", 1)[1]
    assert "write" not in subscriber_block
    assert "$SYS" not in text.replace("no one reads $SYS", "")
    assert [a.username for a in plan.accounts_on("summit")] == ["site-summit", "site-base", "operator", "subscriber"]


@pytest.mark.parametrize(
    ("sites", "words"),
    [
        ((SiteSpec(name="summit", role="summit", peers=("base",)), SiteSpec(name="base", role="archive", peers=())),
         "listed by 'summit' only"),
        ((SiteSpec(name="summit", role="summit", peers=("nowhere",)), SiteSpec(name="a", role="archive", peers=())),
         "unknown peer 'nowhere'"),
        ((SiteSpec(name="summit", role="summit", peers=("summit",)), SiteSpec(name="a", role="archive", peers=())),
         "lists itself"),
        ((SiteSpec(name="Summit!", role="summit", peers=()), SiteSpec(name="a", role="archive", peers=())),
         "does not match"),
        ((SiteSpec(name="s", role="summit", peers=()),), "exactly one archive"),
    ],
    ids=["one-sided", "unknown", "self", "bad-name", "no-archive"],
)  # fmt: skip
def test_an_inconsistent_description_is_refused_naming_the_problem(sites: tuple[SiteSpec, ...], words: str) -> None:
    """Bad sites and links raise AccountsError saying what is wrong."""
    with pytest.raises(AccountsError, match=words):
        plan_accounts(sites)


def test_account_names_may_not_impersonate_daemons_or_repeat() -> None:
    """An operator called site-x, or the same name twice, is refused; passwords are fresh unless kept."""
    with pytest.raises(AccountsError, match="must not start with"):
        plan_accounts(TRIANGLE, operators=("site-archive",))
    with pytest.raises(AccountsError, match="used twice"):
        plan_accounts(TRIANGLE, operators=("ops",), subscribers=("ops",))
    first, second = plan_accounts(TRIANGLE), plan_accounts(TRIANGLE)
    assert first.passwords()["site-base"] != second.passwords()["site-base"]
    assert len(first.passwords()["site-base"]) >= 43
    assert plan_accounts(TRIANGLE, passwords=first.passwords()).passwords() == first.passwords()
