"""Shared fixtures for the integration tests: real clusters, real brokers, real journals.

- ``make_cluster`` starts a :class:`ops.cluster.Cluster` (three mosquittos, three daemon processes)
  under ``tmp_path`` with fast timers and stops it at teardown.
- ``subscribe`` connects an MQTT v5 collector to one site's broker; tests wait on it with
  ``await collector.wait_for(...)``, woken by each received message (no polling).
- ``read_catalog`` / ``query_journal`` read the sites' SQLite journals read-only.
- ``wait_settled`` is the "everything settled" check over the sites' ``/v1/status``, woken by the
  cluster's MQTT traffic (``cluster_traffic``), with a bounded re-check between messages.

Tests that need brokers are skipped with a clear reason when mosquitto is not installed, except
under CI (``CI`` set), where a missing mosquitto is an error rather than a silent skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ops.broker import BrokerError, mosquitto_binary
from ops.camera import write_exposure
from ops.cluster import Cluster, ClusterError
from protocol.signing import load_private_key

FAST_TUNING: dict[str, float] = {
    "ack_timeout_s": 2.0,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 2.0,
    "rescan_interval_s": 5.0,
    "breaker_hold_down_s": 2.0,
    "end_to_end_timeout_s": 20.0,
    "mqtt_keepalive_s": 2,
}
"""Timers short enough for tests; every value must be positive (the topology loader checks)."""

DRILL_TUNING: dict[str, float] = {
    "ack_timeout_s": 1.5,
    "backoff_initial_s": 0.2,
    "backoff_max_s": 2.0,
    "breaker_failures": 2,
    "breaker_hold_down_s": 3.0,
    "end_to_end_timeout_s": 8.0,
    "mqtt_keepalive_s": 2,
    "publish_timeout_s": 1.5,
}
"""Timers for drills (cuts, failover, failback): slower than FAST_TUNING, so that a cut is told from load."""

DAYOBS = "20250601"
INSTRUMENT = "ComCam"
SITES = ("summit", "base", "archive")
CLUSTER_FIXTURES = {"make_cluster", "cluster"}


def _mosquitto_missing() -> str | None:
    try:
        mosquitto_binary()
    except BrokerError as exc:
        return str(exc)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip broker-backed tests with a clear reason when mosquitto is absent (never under CI)."""
    missing = _mosquitto_missing()
    if missing is None or os.environ.get("CI"):
        return
    marker = pytest.mark.skip(reason=f"integration test needs a real broker: {missing}")
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(marker)


# ---- clusters -----------------------------------------------------------------------------

MakeCluster = Callable[..., Awaitable[Cluster]]
PORT_CLASH_ATTEMPTS = 3


def _port_clash(workdir: Path, error: str) -> bool:
    """Whether a failed cluster start was a port taken by someone else (the error or the logs say so)."""
    if "address already in use" in error.lower():
        return True
    for log in [*workdir.glob("logs/*.log"), *workdir.glob("*/broker/mosquitto.log")]:
        text = log.read_text(errors="replace")
        if "address already in use" in text.lower():
            return True
    return False


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[MakeCluster]:
    """A factory of started clusters in ``tmp_path``; each is stopped at teardown.

    Keyword arguments go to :class:`Cluster`; ``tuning`` entries override :data:`FAST_TUNING`.
    """
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def factory(**kwargs: Any) -> Cluster:
            nonlocal count
            tuning = {**FAST_TUNING, **kwargs.pop("tuning", {})}
            for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
                count += 1
                cluster = Cluster(tmp_path / f"cluster{count}", tuning=tuning, **kwargs)
                try:
                    return await stack.enter_async_context(cluster)
                except (ClusterError, BrokerError, OSError) as exc:
                    # Free ports are picked below the ephemeral range, released, then bound: only another
                    # process listening on the machine can take one in between. Only that clash is
                    # retried; any other failure is real.
                    if attempt == PORT_CLASH_ATTEMPTS or not _port_clash(cluster.workdir, str(exc)):
                        raise
            raise AssertionError("unreachable")

        yield factory


@pytest.fixture
async def cluster(make_cluster: MakeCluster) -> Cluster:
    """A started cluster with the default routes (primary via base, and direct)."""
    return await make_cluster()


# ---- the operator's command line ----------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class CliRun:
    """How one ``skyrelay`` command ended."""

    code: int
    out: str
    err: str


async def run_cli(*args: str, timeout_s: float = 60.0) -> CliRun:
    """Run ``python -m ops.cli ARGS`` from the repository, as an operator would; killed after ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"skyrelay {' '.join(args)}: still running after {timeout_s}s") from None
    assert proc.returncode is not None
    return CliRun(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def cli_ok(*args: str, timeout_s: float = 60.0) -> str:
    """Run a ``skyrelay`` command that must exit 0; return its standard output."""
    run = await run_cli(*args, timeout_s=timeout_s)
    assert run.code == 0, f"skyrelay {' '.join(args)} exited {run.code}: {run.err[-3000:] or run.out[-3000:]}"
    return run.out


# ---- MQTT subscriber ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes

    @property
    def data(self) -> Any:
        """The payload as JSON (a signed envelope's body: what it says), or None when it is not JSON."""
        try:
            data = json.loads(self.payload)
            if isinstance(data, dict) and {"signer", "body", "sig"} <= set(data):
                return json.loads(data["body"])
            return data
        except ValueError:
            return None

    @property
    def signer(self) -> str | None:
        """Who sealed the message, when it is a signed envelope."""
        try:
            data = json.loads(self.payload)
        except ValueError:
            return None
        return data.get("signer") if isinstance(data, dict) else None


Until = int | Callable[[list[Received]], bool]
RECONNECT_FIRST_S = 0.02
RECONNECT_MAX_S = 0.5


class Collector:
    """Collects the messages of one topic filter on one broker, reconnecting after a broker restart.

    Tests wait on it with :meth:`wait_for`; each received message wakes the waiters.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        activity: asyncio.Event | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.login = login
        self.topic_filter = topic_filter
        self.messages: list[Received] = []
        self.connected = asyncio.Event()
        self.connections = 0
        self.activity = activity
        """Set at every received message (shared by several collectors to wait on any of them)."""
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe; return once the subscription is acknowledged."""
        self.start_soon()
        async with asyncio.timeout(timeout_s):
            await self.connected.wait()

    def start_soon(self) -> None:
        """Start connecting and return at once (the broker may be down for now)."""
        self._task = asyncio.create_task(self._run(), name=f"collector {self.topic_filter}")

    async def stop(self) -> None:
        """Disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        identifier = f"test-collector-{uuid.uuid4().hex[:12]}"
        pause_s = RECONNECT_FIRST_S
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=identifier,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    keepalive=5,
                    username=self.login[0] if self.login else None,
                    password=self.login[1] if self.login else None,
                ) as client:
                    await client.subscribe(self.topic_filter, qos=1)
                    self.connections += 1
                    self.connected.set()
                    pause_s = RECONNECT_FIRST_S
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        self.messages.append(Received(str(message.topic), payload))
                        if self.activity is not None:
                            self.activity.set()
                        async with self._changed:
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                pass
            self.connected.clear()
            # No event says a restarted broker (another process) listens again: a bounded retry with
            # capped exponential backoff, so the subscriber is back within a fraction of a second.
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, RECONNECT_MAX_S)

    async def wait_for(self, until: Until, timeout_s: float) -> list[Received]:
        """Wait until ``until`` holds: a message count, or a predicate over all messages so far.

        Raises:
            AssertionError: not within ``timeout_s`` seconds (lists what did arrive).
        """
        predicate: Callable[[list[Received]], bool] = (
            (lambda msgs: len(msgs) >= until) if isinstance(until, int) else until
        )
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.messages))
        except TimeoutError:
            seen = [m.payload[:200].decode("utf-8", "replace") for m in self.messages[-10:]]
            raise AssertionError(
                f"{self.topic_filter}: condition not met within {timeout_s}s; "
                f"{len(self.messages)} message(s), the last ones: {seen}"
            ) from None
        return list(self.messages)

    async def next_message(self, timeout_s: float) -> bool:
        """Wait for one more message; return False after ``timeout_s`` seconds without one."""
        count = len(self.messages)
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: len(self.messages) > count)
        except TimeoutError:
            return False
        return True

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        """Decoded payloads whose ``type`` is ``message_type``, and such messages carried in a batch."""
        out = []
        for message in self.messages:
            data = message.data
            if not isinstance(data, dict):
                continue
            if data.get("type") == "batch" and message_type != "batch" and isinstance(data.get("messages"), list):
                out.extend(
                    e["body"]
                    for e in data["messages"]
                    if isinstance(e, dict) and isinstance(e.get("body"), dict) and e["body"].get("type") == message_type
                )
            elif data.get("type") == message_type:
                out.append(data)
        return out


Subscribe = Callable[[Cluster, str, str], Awaitable[Collector]]


def login(cluster: Cluster, account: str = "operator") -> tuple[str, str]:
    """(username, password) of one of the cluster's broker accounts: ``operator``, ``subscriber`` or ``site-X``."""
    assert cluster.security is not None
    passwords = cluster.security.plan.passwords()
    return account, passwords[account]


@pytest.fixture
async def subscribe() -> AsyncIterator[Subscribe]:
    """``await subscribe(cluster, site, topic_filter)``: a started :class:`Collector` on that site's broker,
    logged in as the operator (who may read everything under ``skyrelay/v1/``)."""
    collectors: list[Collector] = []

    async def factory(cluster: Cluster, site: str, topic_filter: str) -> Collector:
        collector = Collector("127.0.0.1", cluster.brokers[site].port, topic_filter, login=login(cluster))
        collectors.append(collector)
        await collector.start()
        return collector

    yield factory
    for collector in collectors:
        await collector.stop()


def site_key(cluster: Cluster, signer: str) -> Ed25519PrivateKey:
    """The private signing key of a site (or ``operator``) of the cluster, as a thief who took it would hold it."""
    path = (
        cluster.workdir / "operator.key" if signer == "operator" else cluster.workdir / signer / "state" / "signing.key"
    )
    return load_private_key(path)


def mailbox_writer(site: str, topic: str) -> str:
    """An account the broker lets write ``topic`` on ``site``'s broker: a peer's daemon for its mailbox."""
    if topic.endswith("/control"):
        return "operator"
    return "site-base" if site != "base" else "site-summit"


async def publish(cluster: Cluster, site: str, topic: str, payload: bytes, *, account: str | None = None) -> None:
    """Publish one QoS 1 message on a site's broker as someone holding a stolen broker account would
    (by default a peer daemon's account, which the broker lets write into the mailbox)."""
    username, password = login(cluster, account or mailbox_writer(site, topic))
    async with aiomqtt.Client(
        "127.0.0.1",
        cluster.brokers[site].port,
        identifier=f"test-publisher-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        username=username,
        password=password,
    ) as client:
        await client.publish(topic, payload, qos=1)


# ---- journals, files, status --------------------------------------------------------------


def journal_path(cluster: Cluster, site: str) -> Path:
    """A site's journal (the archive's holds the catalog)."""
    return cluster.workdir / site / "state" / "journal.sqlite"


def query_journal(cluster: Cluster, site: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run a read-only query on a site's journal."""
    uri = f"file:{journal_path(cluster, site)}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql, params).fetchall()]


def read_catalog(cluster: Cluster) -> list[dict[str, Any]]:
    """Every row of the archive's catalog."""
    return query_journal(cluster, "archive", "SELECT * FROM catalog ORDER BY name")


def blake3_of(path: Path) -> str:
    """The wire checksum ``blake3:<hex>`` of a file's bytes."""
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"


async def checksums(paths: Sequence[Path]) -> dict[str, str]:
    """File name → blake3 of each path, hashed off the event loop."""
    return await asyncio.to_thread(lambda: {p.name: blake3_of(p) for p in paths})


async def write_files(
    cluster: Cluster, *, seqnum: int, size_bytes: int = 256 * 1024, detectors: Sequence[str] | None = None
) -> list[Path]:
    """Write one ComCam exposure (9 real FITS files, or ``detectors``) into the summit inbox, off the loop."""
    return await asyncio.to_thread(
        write_exposure,
        cluster.inbox,
        INSTRUMENT,
        dayobs=DAYOBS,
        seqnum=seqnum,
        size_bytes=size_bytes,
        detectors=detectors,
    )


def obsid_of(seqnum: int) -> str:
    """The OBSID the camera simulator gives a ComCam exposure of :data:`DAYOBS`."""
    return f"CC_O_{DAYOBS}_{seqnum:06d}"


def drop_into_inbox(cluster: Cluster, name: str, data: bytes) -> Path:
    """Put a file into the inbox as a camera does: write a temporary name, then rename."""
    final = cluster.inbox / name
    temporary = cluster.inbox / f"{name}.part"
    temporary.write_bytes(data)
    os.replace(temporary, final)
    return final


def http_ssl(cluster: Cluster) -> ssl.SSLContext | bool:
    """What a client passes as aiohttp's ``ssl=`` to reach this cluster's data servers."""
    return ssl.create_default_context(cafile=str(cluster.http_tls[0])) if cluster.http_tls else True


def operator_headers(cluster: Cluster) -> dict[str, str]:
    """HTTP headers that log in as the cluster's operator (HTTP Basic)."""
    username, password = login(cluster)
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


async def site_status(session: aiohttp.ClientSession, cluster: Cluster, site: str) -> dict[str, Any]:
    """A site's ``GET /v1/status`` (over HTTPS when the cluster's data servers speak it)."""
    url = f"{cluster.http_url(site)}/v1/status"
    headers = operator_headers(cluster)
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5), ssl=http_ssl(cluster), headers=headers) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
        return data


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until ``predicate()`` holds: it reads another process's journal or files, which announce nothing,
    so re-check with a bounded backoff (0.05 s doubling to 0.8 s)."""

    async def holds() -> bool:
        return predicate()

    await until_async(holds, timeout_s, what)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Wait until ``await predicate()`` holds (it asks a daemon over HTTP), with :func:`until`'s backoff."""
    pause_s = 0.05
    try:
        async with asyncio.timeout(timeout_s):
            while not await predicate():
                await asyncio.sleep(pause_s)
                pause_s = min(2 * pause_s, 0.8)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout_s}s") from None


async def summit_status(cluster: Cluster) -> dict[str, Any]:
    """The summit's ``/v1/status``."""
    async with aiohttp.ClientSession() as session:
        return await site_status(session, cluster, "summit")


async def converged(cluster: Cluster) -> None:
    """Wait until the summit sees every route healthy and new files take the preferred one again: a daemon is
    ready before its links and its peers' presence have all come up, a route that failed is taken again only
    after the failback hold-down, and a file written meanwhile may take another route."""

    async def healthy() -> bool:
        status = await summit_status(cluster)
        links = all(link == {"connected": True, "peer_online": True} for link in status["links"].values())
        routes = status["routes"]
        ready = all(r["healthy"] and not r["evidence"]["onward_unreachable"] for r in routes)
        return links and ready and bool(routes[0]["evidence"]["in_use"])

    await until_async(healthy, 30, "every route healthy at the summit")


def assert_daemons_alive(cluster: Cluster) -> None:
    """Fail at once, with the end of its log, if any site's daemon process has exited."""
    for site, daemon in cluster.daemons.items():
        if daemon.proc is not None and daemon.proc.returncode is not None:
            logfile = cluster.workdir / "logs" / f"{site}.log"
            tail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else "(no log)"
            raise AssertionError(f"the {site} daemon exited with {daemon.proc.returncode}; its log ends:\n{tail}")


def _settled(statuses: Mapping[str, Mapping[str, Any]], want: Mapping[str, int]) -> bool:
    return statuses["summit"].get("files") == want and all(s.get("pending") == 0 for s in statuses.values())


@contextlib.asynccontextmanager
async def cluster_traffic(cluster: Cluster) -> AsyncIterator[asyncio.Event]:
    """An event set by every MQTT message on any of the cluster's brokers (offers, acks, custody, notices).

    Clear it, look at the cluster, then wait on it: whatever happened in between has set it. The
    subscribers connect in the background, so a broker that is down for now delays nothing.
    """
    activity = asyncio.Event()
    watchers = [
        Collector("127.0.0.1", broker.port, "skyrelay/v1/#", activity=activity, login=login(cluster))
        for broker in cluster.brokers.values()
    ]
    for watcher in watchers:
        watcher.start_soon()
    try:
        yield activity
    finally:
        for watcher in watchers:
            await watcher.stop()


SETTLE_RECHECK_FIRST_S = 0.05
SETTLE_RECHECK_MAX_S = 0.8


async def wait_settled(
    cluster: Cluster, *, archived: int, timeout_s: float = 60.0, wake: Collector | None = None, replaced: int = 0
) -> dict[str, dict[str, Any]]:
    """Wait until custody of ``archived`` files is back at the summit and no site has pending work
    (and, with ``replaced``, that many inbox files were rewritten before they left and are not sent).

    Woken by the cluster's own traffic (:func:`cluster_traffic`): each MQTT message on any site's broker
    makes it re-read every site's ``/v1/status``, for up to ``timeout_s`` seconds. A site updates its
    status just after the message that changes it and announces nothing of its own, so between messages
    it also re-checks with a bounded backoff (0.05 s doubling to 0.8 s, back to 0.05 s after each
    message). ``wake`` (a collector on one of the brokers) adds nothing the traffic watch does not
    already see; it is accepted for the callers that pass it. Returns the statuses.

    Raises:
        AssertionError: not settled in time (shows the last statuses seen).
    """
    statuses: dict[str, dict[str, Any]] = {}
    want = {"archived": archived, **({"replaced": replaced} if replaced else {})}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pause_s = SETTLE_RECHECK_FIRST_S
    async with cluster_traffic(cluster) as traffic, aiohttp.ClientSession() as session:
        while True:
            assert_daemons_alive(cluster)
            traffic.clear()
            try:
                statuses = {site: await site_status(session, cluster, site) for site in SITES}
            except (aiohttp.ClientError, TimeoutError):
                statuses = {}
            if statuses and _settled(statuses, want):
                return statuses
            if loop.time() >= deadline:
                brief = {
                    site: {k: s.get(k) for k in ("files", "pending", "counters", "catalog", "recent_problems")}
                    for site, s in statuses.items()
                }
                raise AssertionError(
                    f"not settled within {timeout_s}s (want summit files {want}, "
                    f"pending 0 everywhere): {json.dumps(brief, indent=1)[:6000]}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(pause_s, max(0.0, deadline - loop.time()))):
                    await traffic.wait()
            pause_s = SETTLE_RECHECK_FIRST_S if traffic.is_set() else min(2 * pause_s, SETTLE_RECHECK_MAX_S)


def arrived_names(notices: Collector) -> set[str]:
    """Names of the files whose arrival notice a collector has seen."""
    return {n["name"] for n in notices.of_type("arrival")}


async def write_exposures(cluster: Cluster, seqnums: Sequence[int], size_bytes: int) -> list[Path]:
    """Write one camera exposure per SEQNUM into the summit inbox; the paths written."""
    paths: list[Path] = []
    for seqnum in seqnums:
        paths += await write_files(cluster, seqnum=seqnum, size_bytes=size_bytes)
    return paths
