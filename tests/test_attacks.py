"""Trust, attacked on a real cluster: every forgery of the "Trust" issue is refused, reported, and changes nothing.

Each test replays one attack that worked before signatures, accounts and bounds, against three real
mosquittos and three daemon processes, and asserts what the user sees: the file is in the archive once
with the camera's checksum, the route policy is the operator's, the daemons still run, and each refused
message is a problem on ``problems/<site>``. The attacker holds the SUBSCRIBER account or none; where
the broker's ACL already stops the subscriber, the same forgery is tried again with a stolen peer DAEMON
account (its broker password, not its signing key), to show that the signature check is what stops it.

Attacks tested elsewhere, not repeated here:

- two FIFOs in the inbox, a symlink to an outside file: ``tests/test_inbox_hostile.py``
  (``test_fifos_in_the_inbox_are_reported_and_block_nothing``,
  ``test_symlinks_in_the_inbox_are_reported_and_their_targets_never_shipped``);
- all routes disabled, a file dropped, then ``skyrelay routes auto``: ``tests/test_held_files.py``
  (``test_every_route_disabled_holds_the_file_until_routes_auto``);
- the archive's broker SIGKILLed right after a notice was published: ``tests/test_notice_log.py``
  (``test_a_notice_lost_by_a_killed_broker_is_replayed``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import paho.mqtt.client as paho
import pytest
from conftest import (
    DAYOBS,
    INSTRUMENT,
    SITES,
    Collector,
    MakeCluster,
    Subscribe,
    blake3_of,
    checksums,
    cli_ok,
    converged,
    login,
    obsid_of,
    operator_headers,
    query_journal,
    read_catalog,
    run_cli,
    site_status,
    summit_status,
    until,
    until_async,
    wait_settled,
    write_files,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from daemon.config import load_topology
from daemon.credentials import secret_client_id
from daemon.trust import PULL_HEADER, Trust
from ops.cluster import Cluster
from processors.detectors import expected_detectors
from protocol import topics
from protocol.control import RouteControl
from protocol.custody import Custody, Receipt
from protocol.presence import Presence
from protocol.signing import load_private_key, seal, seal_receipt
from protocol.transfer import Ack, Offer

pytestmark = pytest.mark.timeout(150)

PRIMARY_ONLY = {"primary": ["summit", "base", "archive"]}
DETECTOR = sorted(expected_detectors(INSTRUMENT))[0]
ARRIVALS = "skyrelay/v1/arrivals/#"
WRONG_CHECKSUM = "blake3:" + "0" * 64
NOT_AUTHORIZED = "Not authorized"
ALLOWED = {"Success", "No matching subscribers"}
PAUSABLE: dict[str, float] = {"mqtt_keepalive_s": 10, "ack_timeout_s": 30.0}
"""Timers for a test that SIGSTOPs a daemon for a few seconds: its broker keeps the connection (1.5 x
keepalive) and its peer does not time the pending transfer out, so nothing but the attack acts meanwhile."""

ATTACKER_KEY = Ed25519PrivateKey.generate()
"""The attacker's own signing key: known to no topology."""


# ---- the attacker's tools ------------------------------------------------------------------


def _puback_blocking(port: int, account: tuple[str, str], topic: str, payload: bytes, retain: bool) -> str:
    """Connect with ``account``, publish at QoS 1 and return the broker's PUBACK reason (paho, on its thread)."""
    connected, acked = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(_c: paho.Client, _u: object, _f: ConnectFlags, rc: ReasonCode, _p: Properties | None) -> None:
        outcome["connack"] = str(rc)
        connected.set()

    def on_publish(_c: paho.Client, _u: object, _mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        outcome["puback"] = str(rc)
        acked.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"test-attacker-{uuid.uuid4().hex[:12]}", protocol=paho.MQTTv5
    )
    client.username_pw_set(*account)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
        assert outcome["connack"] == "Success", f"{account[0]} could not log in: {outcome['connack']}"
        client.publish(topic, payload, qos=1, retain=retain)
        assert acked.wait(10), "no PUBACK"
        return outcome["puback"]
    finally:
        client.disconnect()
        client.loop_stop()


async def puback(cluster: Cluster, site: str, account: str, topic: str, payload: bytes, *, retain: bool = False) -> str:
    """Publish ``payload`` on ``site``'s broker logged in as ``account``; the PUBACK reason code."""
    port = cluster.brokers[site].port
    return await asyncio.to_thread(_puback_blocking, port, login(cluster, account), topic, payload, retain)


async def inject(
    cluster: Cluster, site: str, account: str, topic: str, payload: bytes, *, retain: bool = False
) -> None:
    """Publish with a stolen account the broker lets write ``topic``; fail if the broker refused it."""
    reason = await puback(cluster, site, account, topic, payload, retain=retain)
    assert reason in ALLOWED, f"{account} may not write {topic} on {site}'s broker: {reason}"


async def assert_refused_by_the_broker(cluster: Cluster, site: str, topic: str, payload: bytes) -> None:
    """No anonymous client may connect to ``site``'s broker, and the subscriber may not publish ``topic``."""
    with pytest.raises(aiomqtt.MqttError, match=NOT_AUTHORIZED):
        async with aiomqtt.Client(
            "127.0.0.1", cluster.brokers[site].port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10
        ) as anonymous:
            await anonymous.publish(topic, payload, qos=1)
    assert await puback(cluster, site, "subscriber", topic, payload) == NOT_AUTHORIZED, topic


def forged(body: bytes, *, kind: str, signer: str, to: str) -> bytes:
    """An envelope that claims ``signer`` but is signed with the attacker's key."""
    return seal(body, kind=kind, signer=signer, key=ATTACKER_KEY, to=to)


def all_files(paths: Iterable[str]) -> bool:
    """Whether every path is a regular file."""
    return all(Path(p).is_file() for p in paths)


def signing_key(cluster: Cluster, site: str) -> Ed25519PrivateKey:
    """A site's real private key (a compromised site)."""
    return load_private_key(cluster.workdir / site / "state" / "signing.key")


def trust_of(cluster: Cluster, site: str) -> Trust:
    """What ``site`` itself would sign with (to sign pulls as that site)."""
    return Trust.load(load_topology(cluster.topology_path), site)


@contextlib.asynccontextmanager
async def paused(cluster: Cluster, site: str) -> AsyncIterator[None]:
    """SIGSTOP a site's daemon for the block (its connections stay open, it answers nothing), then SIGCONT."""
    pid = cluster.daemons[site].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# ---- what the user sees ----------------------------------------------------------------------


def problems_of(collector: Collector, kind: str | tuple[str, ...]) -> list[dict[str, Any]]:
    """The problems of ``kind`` (or any of several kinds) a collector on ``problems/<site>`` received."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return [p for p in collector.of_type("problem") if p["kind"] in kinds]


async def wait_problems(
    collector: Collector, kind: str | tuple[str, ...], count: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Wait until ``count`` problems of ``kind`` were reported; return them."""
    await collector.wait_for(lambda _: len(problems_of(collector, kind)) >= count, timeout_s=timeout_s)
    return problems_of(collector, kind)


async def started(make_cluster: MakeCluster, **kwargs: Any) -> Cluster:
    """A started cluster (``kwargs`` as for :class:`Cluster`) whose summit sees every route healthy."""
    cluster = await make_cluster(**kwargs)
    await converged(cluster)
    return cluster


async def primary_healthy(cluster: Cluster) -> bool:
    """Whether the summit shows the primary route healthy."""
    [primary] = [r for r in (await summit_status(cluster))["routes"] if r["name"] == "primary"]
    return bool(primary["healthy"])


def policy_of(status: dict[str, Any]) -> dict[str, str]:
    """Route -> the operator's policy, as the summit shows it."""
    return {r["name"]: r["policy"] for r in status["routes"]}


def assert_archived_once(cluster: Cluster, sources: dict[str, str]) -> list[dict[str, Any]]:
    """The catalog holds exactly ``sources`` (name -> camera checksum), each once, and the archived bytes
    hash to what the catalog says; return the catalog rows."""
    catalog = read_catalog(cluster)
    names = [r["name"] for r in catalog]
    assert sorted(names) == sorted(sources), f"catalog {names}, want {sorted(sources)}"
    for row in catalog:
        assert row["checksum"] == sources[row["name"]], row
        assert blake3_of(cluster.archive_root / row["archive_path"]) == row["archived_checksum"], row
    return catalog


async def assert_still_works(cluster: Cluster, before: dict[str, str], *, seqnum: int) -> None:
    """A file dropped after the attack is archived exactly once, next to what was archived ``before``."""
    [path] = await write_files(cluster, seqnum=seqnum, detectors=[DETECTOR])
    sources = {**before, path.name: blake3_of(path)}
    await wait_settled(cluster, archived=len(sources), timeout_s=45)
    assert_archived_once(cluster, sources)


def arrival_notices_logged(cluster: Cluster) -> list[dict[str, Any]]:
    """The archive's notice log, arrivals only (not exposure notices)."""
    rows = query_journal(cluster, "archive", "SELECT topic, payload FROM notices ORDER BY rowid")
    out = []
    for row in rows:
        payload = row["payload"]
        data = json.loads(payload if isinstance(payload, str | bytes) else str(payload))
        if isinstance(data, dict) and {"signer", "body", "sig"} <= set(data):
            data = json.loads(data["body"])
        if data.get("type") == "arrival":
            out.append(data)
    return out


# ---- forged custody ------------------------------------------------------------------------


def forged_receipt(name: str, size: int, checksum: str) -> str:
    """A custody receipt saying the file is archived, signed by the attacker as if by the archive."""
    receipt = Receipt(
        receipt_id=f"r-forged-{uuid.uuid4().hex[:8]}",
        archive="archive",
        name=name,
        size=size,
        checksum=checksum,
        status="archived",
        archive_path=f"raw/{INSTRUMENT}/{DAYOBS}/{name}",
        archived_at=time.time(),
        route="primary",
    )
    return seal_receipt(receipt.to_json(), archive="archive", key=ATTACKER_KEY).decode()


def forged_custody(*, sender: str, receiver: str, path: Path) -> list[tuple[str, bytes]]:
    """Custody messages from ``sender`` to ``receiver`` claiming ``path``'s file is archived: (label, payload)."""
    size, checksum = path.stat().st_size, blake3_of(path)
    hop = Custody(
        custody_id=f"c-forged-{uuid.uuid4().hex[:8]}",
        sender=sender,
        receiver=receiver,
        receipt=forged_receipt(path.name, size, checksum),
    ).to_json()
    legacy = {
        "type": "custody",
        "v": 1,
        "custody_id": f"c-legacy-{uuid.uuid4().hex[:8]}",
        "sender": sender,
        "receiver": receiver,
        "name": path.name,
        "size": size,
        "checksum": checksum,
        "status": "archived",
        "archive_path": f"raw/{INSTRUMENT}/{DAYOBS}/{path.name}",
        "archived_at": time.time(),
        "route": "primary",
    }
    return [
        ("unsigned custody of release 0.1.0", json.dumps(legacy).encode()),
        ("unsigned hop", hop),
        ("hop signed with the attacker's key", forged(hop, kind="custody", signer=sender, to=receiver)),
    ]


async def cut_off_the_archive(cluster: Cluster, subscribe: Subscribe, *, seqnum: int, **kwargs: Any) -> list[Path]:
    """SIGKILL the archive's daemon, write an exposure, and return once the base holds every file of it
    (the base has offered each to the archive's mailbox, alone or in a batch)."""
    offers = await subscribe(cluster, "archive", topics.site_wildcard("archive"))
    await cluster.daemons["archive"].kill()
    paths = await write_files(cluster, seqnum=seqnum, size_bytes=64 * 1024, **kwargs)
    names = {p.name for p in paths}
    await offers.wait_for(lambda _: names <= {o["name"] for o in offers.of_type("offer")}, timeout_s=30)
    return paths


async def test_forged_custody_for_files_held_at_the_base_changes_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """With the archive cut off and an exposure held at the base, custody receipts the archive never signed
    (unsigned, attacker-signed, or relayed by the base's real key) are refused by base and summit: the
    base keeps its copies, the summit awaits custody, and once the archive is back every file is archived
    and ``skyrelay verify`` says OK."""
    cluster = await started(make_cluster, routes=PRIMARY_ONLY)
    problems = {site: await subscribe(cluster, site, topics.problems(site)) for site in ("summit", "base")}
    paths = await cut_off_the_archive(cluster, subscribe, seqnum=1)
    sources = await checksums(paths)
    target = paths[0]

    for site in ("base", "summit"):
        await assert_refused_by_the_broker(cluster, site, topics.site(site, "custody"), b"{}")
    into_base = forged_custody(sender="archive", receiver="base", path=target)
    into_summit = forged_custody(sender="base", receiver="summit", path=target)
    relayed = Custody(
        custody_id=f"c-relayed-{uuid.uuid4().hex[:8]}",
        sender="base",
        receiver="summit",
        receipt=forged_receipt(target.name, target.stat().st_size, sources[target.name]),
    ).to_json()
    base_key = signing_key(cluster, "base")
    relayed_by_base = seal(relayed, kind="custody", signer="base", key=base_key, to="summit")
    into_summit.append(("the base's real key relaying a forged receipt", relayed_by_base))
    for _label, payload in into_base:
        await inject(cluster, "base", "site-archive", topics.site("base", "custody"), payload)
    for _label, payload in into_summit:
        await inject(cluster, "summit", "site-base", topics.site("summit", "custody"), payload)

    refused_base = await wait_problems(problems["base"], "bad_signature", len(into_base))
    refused_summit = await wait_problems(problems["summit"], "bad_signature", len(into_summit))
    assert all(p["topic"] == topics.site("base", "custody") for p in refused_base), refused_base
    assert all(p["topic"] == topics.site("summit", "custody") for p in refused_summit), refused_summit
    base_files = query_journal(cluster, "base", "SELECT name, state, local_path FROM files")
    assert sorted(r["name"] for r in base_files) == sorted(sources)
    assert {r["state"] for r in base_files} == {"held"}, base_files
    assert all_files(r["local_path"] for r in base_files), "the base deleted a relay copy"
    summit_files = query_journal(cluster, "summit", "SELECT name, state FROM files")
    assert {r["state"] for r in summit_files} == {"held"}, summit_files
    status = await summit_status(cluster)
    assert status["custody"]["awaiting"] == len(sources), status["custody"]
    assert status["in_flight"]["files"] == len(sources), status["in_flight"]  # what verify shows as on its way

    await cluster.restart_daemon("archive")
    await wait_settled(cluster, archived=len(sources), timeout_s=45)
    assert_archived_once(cluster, sources)
    verify = await run_cli("verify", "--dayobs", DAYOBS, "--workdir", str(cluster.workdir))
    assert verify.code == 0 and "OK: nothing missing" in verify.out, verify
    assert "1 complete, 0 incomplete" in verify.out and obsid_of(1) in verify.out, verify.out
    await assert_still_works(cluster, sources, seqnum=2)


async def test_forged_custody_never_lets_the_summit_expire_the_cameras_only_copy(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """With ``retention_s`` 3 at the summit and the archive cut off, forged custody for a held file leaves
    the camera's file in place past the retention; the archive's real receipt, once it is back, lets the
    summit expire it 3 s later (so this check can see an expiry)."""
    retention_s = 3.0
    cluster = await started(make_cluster, routes=PRIMARY_ONLY, retention={"summit": retention_s})
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    [path] = await cut_off_the_archive(cluster, subscribe, seqnum=1, detectors=[DETECTOR])
    sources = await checksums([path])

    await assert_refused_by_the_broker(cluster, "summit", topics.site("summit", "custody"), b"{}")
    messages = forged_custody(sender="base", receiver="summit", path=path)
    for _label, payload in messages:
        await inject(cluster, "summit", "site-base", topics.site("summit", "custody"), payload)
    await wait_problems(problems, "bad_signature", len(messages))
    # Had the summit believed one, it would delete the file retention_s later: nothing announces that
    # it did not, so wait out the retention (and a margin) once.
    await asyncio.sleep(retention_s + 1.5)
    assert path.is_file(), "the summit deleted the camera's only copy on a forged receipt"
    [row] = query_journal(cluster, "summit", "SELECT state FROM files")
    assert row["state"] == "held", row

    await cluster.restart_daemon("archive")
    await until(lambda: bool(read_catalog(cluster)), 45, "the file archived")
    assert_archived_once(cluster, sources)
    archived_at = time.monotonic()
    await until(lambda: not path.exists(), 20, "the summit's copy expired after the archive's real receipt")
    assert time.monotonic() - archived_at <= retention_s + 10
    [row] = query_journal(cluster, "summit", "SELECT state FROM files")
    assert row["state"] == "expired", row


# ---- forged and replayed control -------------------------------------------------------------


def control(command: str, route: str | None, *, issued_by: str = "operator", at: float | None = None) -> bytes:
    """A route command's JSON body."""
    return RouteControl(
        control_id=f"ctl-{uuid.uuid4().hex}",
        command=command,  # type: ignore[arg-type]
        route=route,
        issued_by=issued_by,
        at=time.time() if at is None else at,
    ).to_json()


async def test_control_messages_not_signed_by_the_operator_change_no_route(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """A "disable both routes" sent anonymously, by the subscriber, by a peer daemon's account, and with the
    operator's stolen broker login but without the operator's key (unsigned, signed by the attacker as
    the operator, signed by the base's real key with ``issued_by`` operator) is refused: the policy stays
    automatic, nothing is persisted, and files still flow."""
    cluster = await started(make_cluster)
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    events = await subscribe(cluster, "summit", topics.events("summit"))
    topic = topics.site("summit", "control")

    await assert_refused_by_the_broker(cluster, "summit", topic, control("disable", "primary"))
    assert await puback(cluster, "summit", "site-base", topic, control("disable", "primary")) == NOT_AUTHORIZED
    sent = 0
    for route in ("primary", "direct"):
        body = control("disable", route, issued_by="operator")
        for payload in (
            body,
            forged(body, kind="control", signer="operator", to="summit"),
            seal(body, kind="control", signer="base", key=signing_key(cluster, "base"), to="summit"),
        ):
            await inject(cluster, "summit", "operator", topic, payload)
            sent += 1
    refused = await wait_problems(problems, "bad_signature", sent)
    assert {p["details"].get("signer") for p in refused} == {None, "operator", "base"}, refused

    status = await summit_status(cluster)
    assert policy_of(status) == {"primary": "auto", "direct": "auto"}
    stored = query_journal(cluster, "summit", "SELECT value FROM settings WHERE key = 'route_policy'")
    assert all(set(json.loads(r["value"]).values()) == {"auto"} for r in stored), stored
    assert not [e for e in events.of_type("event") if e["kind"] == "route_policy"]
    await assert_still_works(cluster, {}, seqnum=1)


async def test_a_replayed_or_stale_operator_command_is_refused(make_cluster: MakeCluster, subscribe: Subscribe) -> None:
    """A genuine ``routes disable direct`` captured off the broker and published again after ``routes enable
    direct`` is refused as ``stale_control`` (also after a restart of the summit), as is an operator-signed
    command ten minutes old; the policy stays as the operator last set it."""
    cluster = await started(make_cluster)
    workdir = str(cluster.workdir)
    topic = topics.site("summit", "control")
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    events = await subscribe(cluster, "summit", topics.events("summit"))

    def policy_events() -> int:
        return len([e for e in events.of_type("event") if e["kind"] == "route_policy"])

    # The CLI sends its commands over HTTP now; a genuine operator command on the broker, as one captured there:
    operator_key = load_private_key(cluster.workdir / "operator.key")
    genuine = seal(control("disable", "direct"), kind="control", signer="operator", key=operator_key, to="summit")
    await inject(cluster, "summit", "operator", topic, genuine)
    await events.wait_for(lambda _: policy_events() == 1, timeout_s=15)
    await cli_ok("routes", "enable", "direct", "--workdir", workdir)
    await events.wait_for(lambda _: policy_events() == 2, timeout_s=15)

    await inject(cluster, "summit", "operator", topic, genuine)
    [replay] = await wait_problems(problems, "stale_control", 1)
    assert "replay" in replay["reason"], replay
    ten_minutes_old = control("disable", "primary", at=time.time() - 600)
    old = seal(ten_minutes_old, kind="control", signer="operator", key=operator_key, to="summit")
    await inject(cluster, "summit", "operator", topic, old)
    stale = await wait_problems(problems, "stale_control", 2)
    assert "ago" in stale[1]["reason"], stale
    assert policy_of(await summit_status(cluster)) == {"primary": "auto", "direct": "auto"}

    await cluster.daemons["summit"].kill()
    await cluster.restart_daemon("summit")
    await inject(cluster, "summit", "operator", topic, genuine)
    await wait_problems(problems, "stale_control", 3)
    assert policy_of(await summit_status(cluster)) == {"primary": "auto", "direct": "auto"}
    assert policy_events() == 2
    await assert_still_works(cluster, {}, seqnum=1)


# ---- forged acks and pulls of a pending transfer -------------------------------------------


async def pending_offer_to_base(
    cluster: Cluster, subscribe: Subscribe, *, seqnum: int = 1
) -> tuple[Path, dict[str, Any]]:
    """Write one file while the base is paused (call inside ``paused(cluster, "base")``); return it and the
    summit's offer of it, read off the base's broker: a transfer that stays pending until the base resumes."""
    offers = await subscribe(cluster, "base", topics.site("base", "offer"))
    [path] = await write_files(cluster, seqnum=seqnum, detectors=[DETECTOR])
    [received] = await offers.wait_for(1, timeout_s=20)
    offer = received.data
    assert isinstance(offer, dict) and offer["name"] == path.name, offer
    return path, offer


async def test_forged_acks_neither_open_the_breaker_nor_move_traffic(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Three acks of a pending summit->base transfer with its real id and a wrong checksum, published with
    the base daemon's stolen broker account (unsigned, and signed as the base by the attacker), are
    refused: the breaker stays closed and the file, and the next one, go through the base."""
    cluster = await started(make_cluster, tuning=PAUSABLE)
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    events = await subscribe(cluster, "summit", topics.events("summit"))
    topic = topics.site("summit", "ack")
    async with paused(cluster, "base"):
        path, offer = await pending_offer_to_base(cluster, subscribe)

        def ack(status: str) -> bytes:
            return Ack(
                kind="offer",
                transfer_id=offer["transfer_id"],
                sender="base",
                status=status,  # type: ignore[arg-type]
                checksum=WRONG_CHECKSUM,
                size=offer["size"],
                attempt=offer["attempt"],
                at=time.time(),
            ).to_json()

        await assert_refused_by_the_broker(cluster, "summit", topic, ack("stored"))
        acks = [
            ack("stored"),
            forged(ack("stored"), kind="ack", signer="base", to="summit"),
            forged(ack("checksum_mismatch"), kind="ack", signer="base", to="summit"),
        ]
        for payload in acks:
            await inject(cluster, "summit", "site-base", topic, payload)
        await wait_problems(problems, "bad_signature", len(acks))
        [primary] = [r for r in (await summit_status(cluster))["routes"] if r["name"] == "primary"]
        assert primary["healthy"], primary
        assert (primary["evidence"]["breaker"], primary["evidence"]["consecutive_failures"]) == ("closed", 0), primary

    await wait_settled(cluster, archived=1, timeout_s=45)
    [row] = assert_archived_once(cluster, {path.name: blake3_of(path)})
    assert (row["route"], row["sender"]) == ("primary", "base"), row
    await assert_still_works(cluster, {path.name: blake3_of(path)}, seqnum=2)
    assert all(r["route"] == "primary" for r in read_catalog(cluster)), "traffic failed over"
    assert not [e for e in events.of_type("event") if e["kind"] == "breaker_open"], events.of_type("event")


async def test_a_pull_by_a_site_that_is_not_the_receiver_or_of_an_acked_transfer_is_refused(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """With the pull token, a pending summit->base transfer is served to the base (signed by it) and
    refused with 403 to the archive, to an unsigned pull and to a forged signature; once acked it is
    410 Gone even to the base."""
    cluster = await started(make_cluster, tuning=PAUSABLE)
    token = {"Authorization": f"Bearer {cluster.token}"}
    archive, base = trust_of(cluster, "archive"), trust_of(cluster, "base")
    async with paused(cluster, "base"), aiohttp.ClientSession() as session:
        path, offer = await pending_offer_to_base(cluster, subscribe)
        source = offer["source_path"]
        url = cluster.http_url("summit") + source
        stamp = f"{time.time():.0f}"
        attacker_sig = base64.urlsafe_b64encode(ATTACKER_KEY.sign(source.encode())).decode().rstrip("=")
        refusals = {
            "signed by the archive": {**token, PULL_HEADER: archive.pull_header(source)},
            "unsigned": token,
            "forged signature": {**token, PULL_HEADER: f"base:{stamp}:{attacker_sig}"},
        }
        for label, headers in refusals.items():
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                assert resp.status == 403, (label, resp.status, body[:200])
                assert len(body) < 1000 and b"SIMPLE" not in body, label
        async with session.get(url, headers={PULL_HEADER: base.pull_header(source)}) as resp:
            assert resp.status == 401, "a signature without the pull token"
        async with session.get(url, headers={**token, PULL_HEADER: base.pull_header(source)}) as resp:
            assert resp.status == 200
            assert await resp.read() == path.read_bytes()

    await wait_settled(cluster, archived=1, timeout_s=45)
    [transfer] = query_journal(
        cluster, "summit", "SELECT state FROM transfers WHERE transfer_id = ?", (offer["transfer_id"],)
    )
    assert transfer["state"] != "pending", transfer
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={**token, PULL_HEADER: base.pull_header(source)}) as resp,
    ):
        assert resp.status == 410, await resp.text()
    await assert_still_works(cluster, {path.name: blake3_of(path)}, seqnum=2)


# ---- forged presence, stolen client ids ------------------------------------------------------


async def test_a_forged_retained_presence_of_the_base_does_not_take_the_primary_route_down(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Retained presences of the base saying "archive unreachable" or "offline", published with the base
    daemon's stolen account (unsigned, and signed as the base by the attacker), are refused by the summit:
    the primary route stays healthy and new files go through the base."""
    cluster = await started(make_cluster)
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    topic = topics.presence("base")
    await assert_refused_by_the_broker(cluster, "base", topic, b"{}")
    reports = [
        Presence(site="base", state="online", at=time.time(), unreachable=("archive",)).to_json(),
        Presence(site="base", state="offline", at=time.time()).to_json(),
    ]
    payloads = [*reports, *(forged(r, kind="presence", signer="base", to="") for r in reports)]
    for payload in payloads:
        await inject(cluster, "base", "site-base", topic, payload, retain=True)
    refused = await wait_problems(problems, "bad_signature", len(payloads))
    assert {p["topic"] for p in refused} == {topic}, refused

    status = await summit_status(cluster)
    [primary] = [r for r in status["routes"] if r["name"] == "primary"]
    assert primary["healthy"] and primary["evidence"]["onward_unreachable"] == [], primary
    assert status["links"]["base"] == {"connected": True, "peer_online": True}, status["links"]
    await assert_still_works(cluster, {}, seqnum=1)
    assert [r["route"] for r in read_catalog(cluster)] == ["primary"], "the new file went direct"


async def test_a_forged_retained_presence_of_the_base_does_not_outlive_a_restart_of_the_summit(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """A forged retained presence of the base ("archive unreachable"), published with the base daemon's stolen
    account, replaces the base's own retained presence on its broker; a summit restarted afterwards must
    still see the primary route healthy (within 15 s) and send new files through the base."""
    cluster = await started(make_cluster)
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    report = Presence(site="base", state="online", at=time.time(), unreachable=("archive",)).to_json()
    forgery = forged(report, kind="presence", signer="base", to="")
    await inject(cluster, "base", "site-base", topics.presence("base"), forgery, retain=True)
    await wait_problems(problems, "bad_signature", 1)

    await cluster.daemons["summit"].kill()
    await cluster.restart_daemon("summit")

    await until_async(lambda: primary_healthy(cluster), 15, "the restarted summit sees the primary route healthy")
    await assert_still_works(cluster, {}, seqnum=1)
    assert [r["route"] for r in read_catalog(cluster)] == ["primary"], "the new file went direct"


async def test_a_replayed_genuine_presence_of_the_base_does_not_take_the_primary_route_down(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """The base's own signed "archive unreachable" presence, captured by the subscriber while the archive's
    broker was down and replayed as retained with the base daemon's stolen account once it is back, is
    not believed: the summit keeps the primary route healthy (now, and after a restart) and new files go
    through the base."""
    cluster = await started(make_cluster)
    topic = topics.presence("base")
    captured = Collector("127.0.0.1", cluster.brokers["base"].port, topic, login=login(cluster, "subscriber"))
    await captured.start()
    try:
        await cluster.brokers["archive"].kill()
        await captured.wait_for(lambda _: any("archive" in m.data["unreachable"] for m in captured.messages), 20)
        old = next(m.payload for m in captured.messages if "archive" in m.data["unreachable"])
        await cluster.restart_broker("archive")
        await captured.wait_for(lambda _: captured.messages[-1].data["unreachable"] == [], 20)
    finally:
        await captured.stop()
    await converged(cluster)

    await inject(cluster, "base", "site-base", topic, old, retain=True)

    await assert_still_works(cluster, {}, seqnum=1)
    assert [r["route"] for r in read_catalog(cluster)] == ["primary"], "the new file went direct"
    assert await primary_healthy(cluster), "the replayed presence took the primary route down"
    await cluster.daemons["summit"].kill()
    await cluster.restart_daemon("summit")
    await until_async(lambda: primary_healthy(cluster), 15, "the restarted summit sees the primary route healthy")


def log_text(cluster: Cluster, site: str, offset: int = 0) -> str:
    """A daemon's log from byte ``offset``."""
    with (cluster.workdir / "logs" / f"{site}.log").open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def log_size(cluster: Cluster, site: str) -> int:
    """How long a daemon's log is now."""
    return (cluster.workdir / "logs" / f"{site}.log").stat().st_size


DROPPED = ("mailbox_disconnected", "link_down")
"""What a daemon logs when a broker closes one of its connections."""


def guessed_client_ids(broker: str) -> list[str]:
    """Every daemon client id on ``broker``'s broker an attacker could guess without the account passwords
    the real ones are made from (release 0.1.0 used ``skyrelay-<purpose>``)."""
    peers = [s for s in SITES if s != broker]
    ids = ["skyrelay", "skyrelay-own", f"skyrelay-to-{broker}", f"site-{broker}", f"site-{broker}-own"]
    return ids + [f"site-{peer}" for peer in peers] + [f"site-{peer}-to-{broker}" for peer in peers]


async def test_connecting_with_a_daemons_client_id_drops_no_daemon(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """The subscriber and a peer daemon's stolen account connect to every broker with every daemon client id
    they can guess: no daemon loses a connection, no presence goes offline, files flow. The real id, which
    only the account's password yields, does take the base's connection over (so the check can see one)."""
    cluster = await started(make_cluster)
    presences = [await subscribe(cluster, site, "skyrelay/v1/presence/#") for site in SITES]
    offsets = {site: log_size(cluster, site) for site in SITES}
    for broker in SITES:
        peer_account = f"site-{next(s for s in SITES if s != broker)}"
        for account in ("subscriber", peer_account):
            username, password = login(cluster, account)
            for identifier in guessed_client_ids(broker):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    cluster.brokers[broker].port,
                    identifier=identifier,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    username=username,
                    password=password,
                    timeout=10,
                ):
                    pass
    await assert_still_works(cluster, {}, seqnum=1)

    for site in SITES:
        after = log_text(cluster, site, offsets[site])
        assert not [word for word in DROPPED if word in after], f"{site} lost a connection:\n{after[-3000:]}"
    offline = [m.topic for c in presences for m in c.messages if (m.data or {}).get("state") == "offline"]
    assert not offline, f"presence went offline: {offline}"

    # The control: the base's real own-broker id, computed from its password, takes the connection over.
    username, password = login(cluster, "site-base")
    real_id = secret_client_id(username, password, "own")
    offset = log_size(cluster, "base")
    subscriber = login(cluster, "subscriber")
    async with aiomqtt.Client(
        "127.0.0.1",
        cluster.brokers["base"].port,
        identifier=real_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=subscriber[0],
        password=subscriber[1],
        timeout=10,
    ):
        await until(lambda: "mailbox_disconnected" in log_text(cluster, "base", offset), 15, "the takeover seen")


# ---- a forged offer ------------------------------------------------------------------------


async def test_a_forged_offer_reusing_a_real_transfer_id_archives_nothing_twice(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """While the base->archive transfer of a file is pending, offers with its transfer id under a new name
    (the genuine envelope with its name changed, unsigned, signed as the base by the attacker) are refused;
    the genuine offer replayed verbatim is answered from the journal: one catalog entry, one notice."""
    cluster = await started(make_cluster, tuning=PAUSABLE)
    problems = await subscribe(cluster, "archive", topics.problems("archive"))
    offers = await subscribe(cluster, "archive", topics.site("archive", "offer"))
    acks = await subscribe(cluster, "base", topics.site("base", "ack"))
    topic = topics.site("archive", "offer")
    async with paused(cluster, "archive"):
        [path] = await write_files(cluster, seqnum=1, detectors=[DETECTOR])
        [genuine] = await offers.wait_for(1, timeout_s=20)
        offer = genuine.data
        assert isinstance(offer, dict) and offer["sender"] == "base", offer
        renamed = {**offer, "name": path.name.replace(f"_{1:06d}_", f"_{2:06d}_")}
        renamed_body = json.dumps(renamed).encode()
        tampered = {**json.loads(genuine.payload), "body": renamed_body.decode()}
        await assert_refused_by_the_broker(cluster, "archive", topic, renamed_body)
        payloads = [
            json.dumps(tampered).encode(),
            renamed_body,
            forged(renamed_body, kind="offer", signer="base", to="archive"),
        ]
        for payload in payloads:
            await inject(cluster, "archive", "site-base", topic, payload)
    await wait_problems(problems, "bad_signature", len(payloads))
    await wait_settled(cluster, archived=1, timeout_s=45)

    def acks_of_the_transfer() -> int:
        return len([a for a in acks.of_type("ack") if a["transfer_id"] == offer["transfer_id"]])

    answered = acks_of_the_transfer()
    await inject(cluster, "archive", "site-base", topic, genuine.payload)
    await acks.wait_for(lambda _: acks_of_the_transfer() > answered, timeout_s=15)
    sources = {path.name: blake3_of(path)}
    assert_archived_once(cluster, sources)
    assert [n["name"] for n in arrival_notices_logged(cluster)] == [path.name]
    stored = list(cluster.archive_root.rglob("*.fits"))
    assert [p.name for p in stored] == [path.name], stored
    await assert_still_works(cluster, sources, seqnum=3)


# ---- hostile bytes, accounts, HTTP -------------------------------------------------------------


MAILBOX_KINDS: tuple[topics.SiteTopicKind, ...] = ("offer", "ack", "custody", "batch")
DEEP = b"[" * 1000 + b"]" * 1000
"""2,000 bytes of JSON nested 1,000 deep: RecursionError in ``json.loads``."""
DEEP_IN_AN_ENVELOPE = (
    b'{"v":1,"kind":"offer","signer":"base","to":"archive","body":' + b"[" * 900 + b"]" * 900 + b',"sig":"AAAA"}'
)


async def test_json_nested_a_thousand_deep_in_any_mailbox_kills_no_daemon(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """The 2,000-byte message nested 1,000 deep, in every mailbox topic of every site and as the base's
    presence, is refused as malformed by each daemon that reads it; no daemon restarts and files flow."""
    cluster = await started(make_cluster)
    problems = {site: await subscribe(cluster, site, topics.problems(site)) for site in SITES}
    pids = {site: cluster.daemons[site].pid for site in SITES}
    writer = {"summit": "site-base", "base": "site-summit", "archive": "site-base"}
    expected = dict.fromkeys(SITES, 0)
    for site in SITES:
        for kind in MAILBOX_KINDS:
            await inject(cluster, site, writer[site], topics.site(site, kind), DEEP)
            expected[site] += 1
    await inject(cluster, "summit", "operator", topics.site("summit", "control"), DEEP)
    expected["summit"] += 1
    await inject(cluster, "archive", "site-base", topics.site("archive", "offer"), DEEP_IN_AN_ENVELOPE)
    expected["archive"] += 1
    await inject(cluster, "base", "site-base", topics.presence("base"), DEEP)  # read by the summit and the archive
    expected["summit"] += 1
    expected["archive"] += 1

    for site in SITES:
        # Bytes that are no envelope are a bad message, whatever topic they came on.
        refused = await wait_problems(problems[site], ("bad_message", "bad_signature"), expected[site])
        assert all("deeper than" in p["reason"] for p in refused), refused
    assert {site: cluster.daemons[site].pid for site in SITES} == pids
    await assert_still_works(cluster, {}, seqnum=1)
    assert {site: cluster.daemons[site].pid for site in SITES} == pids


async def test_brokers_refuse_anonymous_clients_and_the_subscriber_publishes_into_no_mailbox(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Every broker of ``skyrelay up`` refuses anonymous clients and wrong passwords; the subscriber's
    publishes into every mailbox topic, presence and problems are PUBACKed "Not authorized" and reach
    neither a daemon nor an operator reading everything."""
    cluster = await started(make_cluster)
    watchers = [await subscribe(cluster, site, "skyrelay/v1/#") for site in SITES]
    marker = b'{"forged-by": "the subscriber"}'
    for site in SITES:
        port = cluster.brokers[site].port
        with pytest.raises(aiomqtt.MqttError, match=NOT_AUTHORIZED):
            async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10):
                pass
        with pytest.raises(aiomqtt.MqttError, match=r"Bad user name or password|Not authorized"):
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                protocol=aiomqtt.ProtocolVersion.V5,
                username="subscriber",
                password="guess",
                timeout=10,
            ):
                pass
        refused = [topics.site(site, kind) for kind in (*MAILBOX_KINDS, "control")]
        refused += [topics.presence(site), topics.problems(site), topics.events(site)]
        refused.append(topics.arrivals(INSTRUMENT, DETECTOR))
        for topic in refused:
            assert await puback(cluster, site, "subscriber", topic, marker, retain=True) == NOT_AUTHORIZED, topic

    await assert_still_works(cluster, {}, seqnum=1)
    assert not [m.topic for w in watchers for m in w.messages if m.payload == marker]
    async with aiohttp.ClientSession() as session:
        for site in SITES:
            status = await site_status(session, cluster, site)
            assert not status["problems"].get("bad_signature") and not status["problems"].get("bad_message"), status


OPERATOR_PATHS = ("/", "/v1/status", "/v1/queue", "/metrics", f"/v1/verify?dayobs={DAYOBS}", "/v1/quarantine")


def basic_login(user: str, password: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def http_text(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], want: int) -> str:
    """The body of a request that must answer ``want``."""
    async with session.request(method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
        assert resp.status == want, (method, url, headers, resp.status, text[:200])
        return text


async def leaks_without_credentials(cluster: Cluster, site: str, secrets: Sequence[str]) -> list[str]:
    """Ask every credentialed endpoint of ``site`` with no or the wrong credential: each must answer 401;
    return the secrets any answer shows. The operator's own request must show the daemon's pid."""
    subscriber = basic_login(*login(cluster, "subscriber"))
    refused: dict[str, dict[str, str]] = {
        "none": {},
        "wrong password": basic_login("operator", "guess"),
        "pull token": {"Authorization": f"Bearer {cluster.token}"},
    }
    url = cluster.http_url(site)
    leaks: list[str] = []
    async with aiohttp.ClientSession() as session:
        for path in OPERATOR_PATHS:
            for label, headers in {**refused, "subscriber": subscriber}.items():
                text = await http_text(session, "GET", url + path, headers, 401)
                leaks += [f"{site}{path} ({label}): {s}" for s in secrets if s in text]
        for label, headers in refused.items():
            text = await http_text(session, "GET", url + "/v1/notices", headers, 401)
            leaks += [f"{site}/v1/notices ({label}): {s}" for s in secrets if s in text]
        await http_text(session, "POST", url + "/v1/quarantine/1/release", {}, 401)
        status = await http_text(session, "GET", url + "/v1/status", operator_headers(cluster), 200)
        assert str(cluster.daemons[site].pid) in status
    return leaks


async def test_http_without_the_right_credential_is_401_and_leaks_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Status, queue, page, metrics, verify, quarantine and notices answer 401 to no credential, a wrong
    password, the pull token, and (but for notices) the subscriber, with no file name, obsid, transfer id
    or pid in the body; the operator, and the subscriber for notices, are answered."""
    cluster = await started(make_cluster, routes=PRIMARY_ONLY, tuning=PAUSABLE)
    [done] = await write_files(cluster, seqnum=1, detectors=[DETECTOR])
    await wait_settled(cluster, archived=1)
    transfers = [
        r["transfer_id"] for s in ("summit", "base") for r in query_journal(cluster, s, "SELECT * FROM transfers")
    ]
    pids = [str(d.pid) for d in cluster.daemons.values()]
    leaks: list[str] = []
    async with paused(cluster, "base"):
        # A file in flight too, so that the summit's status and queue have a pending transfer to tell of
        # (the paused base answers no HTTP: it is asked once it runs again).
        pending, offer = await pending_offer_to_base(cluster, subscribe, seqnum=2)
        secrets = [done.name, pending.name, obsid_of(1), obsid_of(2), offer["transfer_id"], *transfers, *pids]
        for site in ("summit", "archive"):
            leaks += await leaks_without_credentials(cluster, site, secrets)
        async with aiohttp.ClientSession() as session:
            queue = await http_text(
                session, "GET", cluster.http_url("summit") + "/v1/queue", operator_headers(cluster), 200
            )
            assert pending.name in queue and offer["transfer_id"] in queue
            subscriber = basic_login(*login(cluster, "subscriber"))
            notices = await http_text(session, "GET", cluster.http_url("archive") + "/v1/notices", subscriber, 200)
            assert done.name in notices
    await wait_settled(cluster, archived=2)
    leaks += await leaks_without_credentials(cluster, "base", secrets)
    assert not leaks, leaks


# ---- skyrelay up keeps its brokers alive -------------------------------------------------------


async def test_supervise_restarts_a_killed_broker_and_a_killed_daemon(make_cluster: MakeCluster) -> None:
    """Under ``Cluster.supervise`` (as ``skyrelay up`` runs it), the base's broker and the archive's daemon
    SIGKILLed are started again, and an exposure written afterwards is archived once through the base."""
    cluster = await started(make_cluster)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(cluster.supervise(stop), name="test.supervise")
        try:
            broker_pid = cluster.brokers["base"].pid
            await cluster.brokers["base"].kill()
            await until(lambda: cluster.brokers["base"].pid not in (None, broker_pid), 30, "the base broker back")
            daemon_pid = cluster.daemons["archive"].pid
            await cluster.daemons["archive"].kill()
            await until(lambda: cluster.daemons["archive"].pid not in (None, daemon_pid), 30, "the archive daemon back")

            paths = await write_files(cluster, seqnum=1)
            sources = await checksums(paths)
            await wait_settled(cluster, archived=len(sources), timeout_s=60)
            assert_archived_once(cluster, sources)

            async def base_reached() -> bool:
                status = await summit_status(cluster)
                return bool(status["links"]["base"] == {"connected": True, "peer_online": True})

            await until_async(base_reached, 30, "the summit linked to the restarted base broker")
            assert cluster.brokers["base"].pid is not None and cluster.daemons["archive"].restarts == 1
        finally:
            stop.set()


async def test_a_restarted_site_takes_its_own_last_will_for_its_own_not_for_a_forgery(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """After a SIGKILL and a restart, the summit reports no ``presence_replaced`` problem about its previous
    run's last will or presence (files flow through it again); a presence of the summit forged on its own
    broker with its stolen account is still reported, once."""
    cluster = await started(make_cluster)
    problems = await subscribe(cluster, "summit", topics.problems("summit"))
    await cluster.daemons["summit"].kill()
    await cluster.restart_daemon("summit")
    await converged(cluster)
    await assert_still_works(cluster, {}, seqnum=1)

    report = Presence(site="summit", state="offline", at=time.time()).to_json()
    forgery = forged(report, kind="presence", signer="summit", to="")
    await inject(cluster, "summit", "site-summit", topics.presence("summit"), forgery, retain=True)
    replaced = await wait_problems(problems, "presence_replaced", 1)
    assert len(replaced) == 1, replaced
    assert forgery.decode().startswith(replaced[0]["details"]["payload_preview"]), "reported: not the forgery"
    assert await primary_healthy(cluster)


async def test_a_batch_is_verified_once_and_each_message_in_it_judged_as_if_it_came_alone(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """A batch in the archive's mailbox signed with the stolen operator key is refused whole (an operator may
    send no batch); one signed with the base's real key opens, and each message in it is judged as if it had
    come alone: a control command (which never travels in a batch), an offer that claims the summit as its
    sender, an ack without its fields and an entry that is no message are each refused with their reason. The
    daemon keeps running and files still flow."""
    cluster = await started(make_cluster)
    problems = await subscribe(cluster, "archive", topics.problems("archive"))
    pid = cluster.daemons["archive"].pid
    forged_offer = Offer(
        transfer_id="t-forged-in-a-batch",
        sender="summit",
        receiver="archive",
        name="AT_O_20261201_000001_R00_S00.fits",
        size=10,
        checksum="blake3:" + "0" * 64,
        closed_at=time.time(),
        route="direct",
        route_sites=("summit", "archive"),
        hop=0,
        source_path="/v1/transfers/t-forged-in-a-batch",
        attempt=1,
        sent_at=time.time(),
    )
    control = {"type": "route_control", "v": 1, "command": "disable", "route": "direct"}
    body = json.dumps(
        {
            "type": "batch",
            "v": 1,
            "messages": [
                {"kind": "control", "body": control},
                {"kind": "offer", "body": forged_offer.to_dict()},
                {"kind": "ack", "body": {"type": "ack", "v": 1}},
                "no message at all",
            ],
        }
    ).encode()
    topic = topics.site("archive", "batch")
    by_operator = seal(
        body, kind="batch", signer="operator", key=load_private_key(cluster.workdir / "operator.key"), to="archive"
    )
    await inject(cluster, "archive", "site-base", topic, by_operator)
    by_base = seal(body, kind="batch", signer="base", key=signing_key(cluster, "base"), to="archive")
    await inject(cluster, "archive", "site-base", topic, by_base)

    refused = await wait_problems(problems, ("bad_message", "bad_signature"), 5)
    reasons = sorted(p["reason"] for p in refused)
    assert [p["kind"] for p in refused].count("bad_signature") == 2, reasons
    assert any("'operator' may not send 'batch'" in r for r in reasons), reasons
    assert any("do not travel in a batch" in r for r in reasons), reasons
    assert any("claims to be from 'summit'" in r for r in reasons), reasons
    assert any("rejected ack message" in r and "is required" in r for r in reasons), reasons
    assert any("batch entry 3 must be an object" in r for r in reasons), reasons
    assert (
        query_journal(cluster, "archive", "SELECT * FROM inbound WHERE transfer_id = ?", ("t-forged-in-a-batch",)) == []
    )
    assert cluster.daemons["archive"].pid == pid
    await assert_still_works(cluster, {}, seqnum=1)
