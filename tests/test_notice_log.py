"""The notice log: every notice the archive publishes has a position; nothing a subscriber missed is lost.

The first tests run ``GET /v1/notices`` on a real journal behind a real aiohttp server; the rest run a
real cluster (three mosquittos, three daemons), kill the archive's broker for real, and read what
``skyrelay subscribe --since N`` prints, against the archive's journal as the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from conftest import REPO, MakeCluster, cli_ok, login, query_journal, write_files
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.http.notices import bearer_authorizer, notice_routes
from daemon.journal import Journal
from daemon.journal import notices as journal_notices
from ops.cluster import Cluster
from processors.detectors import expected_detectors
from protocol import topics
from protocol.arrival import ArrivalNotice, ExposureNotice, positioned
from protocol.control import RouteControl
from protocol.errors import ProtocolError

pytestmark = pytest.mark.timeout(120)

TOKEN = "subscriber-token-for-tests"
ARRIVALS = "skyrelay/v1/arrivals/#"
DETECTOR = sorted(expected_detectors("ComCam"))[0]
CHECKSUM = "blake3:" + "0" * 64


# ---- the endpoint on a real journal --------------------------------------------------------


def arrival(number: int) -> ArrivalNotice:
    """An arrival notice of file ``number`` (no position: the journal gives it one)."""
    return ArrivalNotice(
        notice_id=f"n-test{number:04d}",
        obsid=f"CC_O_20250601_{number:06d}",
        instrument="ComCam",
        detector=DETECTOR,
        name=f"file{number}.fits",
        size=1000 + number,
        checksum=CHECKSUM,
        archived_checksum=CHECKSUM,
        archive_path=f"raw/ComCam/20250601/file{number}.fits",
        arrived_at=1000.0 + number,
        closed_at=999.0 + number,
        latency_s=1.0,
        route="primary",
    )


def exposure(number: int) -> ExposureNotice:
    """An exposure notice of exposure ``number``."""
    return ExposureNotice(
        notice_id=f"x-test{number:04d}",
        obsid=f"CC_O_20250601_{number:06d}",
        instrument="ComCam",
        state="complete",
        expected=9,
        arrived=9,
        at=1000.0 + number,
    )


def journal_one(db: sqlite3.Connection, number: int) -> int:
    """Journal notice ``number``: odd numbers are arrivals, even ones exposures (two topics, one log)."""
    if number % 2:
        notice: ArrivalNotice | ExposureNotice = arrival(number)
        topic, key = topics.arrivals("ComCam", DETECTOR), f"file{number}"
    else:
        notice = exposure(number)
        topic, key = topics.exposures("ComCam"), f"exposure/{number}"
    return journal_notices.insert(
        db, notice_id=notice.notice_id, file_key=key, topic=topic, payload=notice.to_json(), at=1000.0 + number
    )


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A real, migrated journal in ``tmp_path``."""
    journal = Journal(tmp_path / "journal.sqlite")
    await journal.open()
    yield journal
    await journal.close()


@pytest.fixture
async def notice_url(journal: Journal) -> AsyncIterator[str]:
    """``/v1/notices`` of ``journal`` served by a real aiohttp server that wants ``Bearer TOKEN``."""
    app = web.Application()
    app.add_routes(notice_routes(journal, bearer_authorizer(TOKEN)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/notices"
    await runner.cleanup()


async def get(url: str, token: str | None = TOKEN, **query: int | str) -> tuple[int, Any]:
    """GET ``url`` with ``query`` (and the bearer ``token``); the status and the JSON (or text) answer."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={k: str(v) for k, v in query.items()}, headers=headers) as resp,
    ):
        body = await resp.read()
        return resp.status, json.loads(body) if resp.content_type == "application/json" else body.decode()


async def test_positions_run_one_two_three_and_travel_in_the_payload(journal: Journal) -> None:
    """Each journaled notice gets the next position, its stored JSON carries it; a rolled-back one leaves no hole."""
    positions = [await journal.transaction(functools.partial(journal_one, number=n)) for n in (1, 2, 3)]

    def journal_then_fail(db: sqlite3.Connection) -> None:
        journal_one(db, 4)
        raise RuntimeError("the ingest transaction failed after journaling its notice")

    with pytest.raises(RuntimeError):
        await journal.transaction(journal_then_fail)
    positions.append(await journal.transaction(lambda db: journal_one(db, 5)))
    rows = await journal.read(journal_notices.after, 0, 100)

    assert positions == [1, 2, 3, 4]
    assert [r.position for r in rows] == [1, 2, 3, 4]
    assert [r.notice_id for r in rows] == ["n-test0001", "x-test0002", "n-test0003", "n-test0005"]
    assert ArrivalNotice.from_json(rows[0].payload).position == 1
    assert ExposureNotice.from_json(rows[1].payload).position == 2
    assert await journal.read(journal_notices.newest) == 4


def test_the_schemas_show_an_optional_position() -> None:
    """Both notice schemas list ``position`` (an integer from 1, or null) and do not require it."""
    for cls in (ArrivalNotice, ExposureNotice):
        schema = cls.json_schema()
        assert schema["properties"]["position"]["anyOf"] == [{"type": "integer", "minimum": 1}, {"type": "null"}]
        assert "position" not in schema["required"]
        assert "notice log" in schema["properties"]["position"]["description"]


def test_only_notices_take_a_position() -> None:
    """Stamping a position on a message that is not a notice is refused, not silently done."""
    control = RouteControl(control_id="ctl-1", command="auto", route=None, issued_by="op", at=1.0)
    with pytest.raises(ProtocolError, match="no position"):
        positioned(control.to_json(), 7)


async def test_the_endpoint_pages_the_log_in_order(journal: Journal, notice_url: str) -> None:
    """Pages of 10 over 25 notices give 1-10, 11-20, 21-25 (each with topic and message), then an empty page."""
    for n in range(1, 26):
        await journal.transaction(functools.partial(journal_one, number=n))

    seen: list[dict[str, Any]] = []
    pages: list[tuple[int, int, bool, int]] = []
    after = 0
    while True:
        status, page = await get(notice_url, after=after, limit=10)
        assert status == 200
        pages.append((page["after"], len(page["notices"]), page["caught_up"], page["newest"]))
        seen += page["notices"]
        if page["caught_up"]:
            break
        after = page["next_after"]
    status, empty = await get(notice_url, after=25)
    status_all, everything = await get(notice_url, limit=50_000)  # more than the cap: capped, not refused

    assert pages == [(0, 10, False, 25), (10, 10, False, 25), (20, 5, True, 25)]
    assert [item["position"] for item in seen] == list(range(1, 26))
    assert all(item["message"]["position"] == item["position"] for item in seen)
    assert [item["topic"] for item in seen[:2]] == [topics.arrivals("ComCam", DETECTOR), topics.exposures("ComCam")]
    assert [item["message"]["type"] for item in seen[:2]] == ["arrival", "exposure"]
    assert seen[0]["notice_id"] == seen[0]["message"]["notice_id"] == "n-test0001"
    assert (status, empty["notices"], empty["caught_up"], empty["next_after"]) == (200, [], True, 25)
    assert (status_all, len(everything["notices"])) == (200, 25)


async def test_the_endpoint_refuses_without_the_credential(journal: Journal, notice_url: str) -> None:
    """No token or a wrong token gets 401 and no notice; a malformed ``after`` or ``limit`` gets 400."""
    await journal.transaction(lambda db: journal_one(db, 1))

    missing = await get(notice_url, token=None)
    wrong = await get(notice_url, token="not-" + TOKEN)
    bad_after = await get(notice_url, after="-1")
    bad_limit = await get(notice_url, limit="0")
    not_a_number = await get(notice_url, after="1e3")

    assert [missing[0], wrong[0]] == [401, 401]
    assert "n-test0001" not in f"{missing[1]}{wrong[1]}"
    assert [bad_after[0], bad_limit[0], not_a_number[0]] == [400, 400, 400]


# ---- skyrelay subscribe --since on a real cluster ------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait until ``predicate()`` (a read of another process's journal: no event to wait on), re-checking
    with a bounded backoff (0.05 s doubling to 0.8 s)."""
    pause_s = 0.05
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, 0.8)


def journal_log(cluster: Cluster) -> list[dict[str, Any]]:
    """The archive's notice log (the truth): position, id, topic, whether the broker acknowledged it."""
    return query_journal(
        cluster, "archive", "SELECT rowid AS position, notice_id, topic, published_at FROM notices ORDER BY rowid"
    )


def published(cluster: Cluster, count: int) -> Callable[[], bool]:
    """A predicate: the archive's broker acknowledged ``count`` notices."""
    return lambda: sum(1 for row in journal_log(cluster) if row["published_at"] is not None) >= count


def lines_of(out: str) -> list[dict[str, Any]]:
    """The JSON lines a ``skyrelay subscribe`` printed."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def subscribe_since(cluster: Cluster, since: int, count: int, *extra: str) -> list[dict[str, Any]]:
    """``skyrelay subscribe --since SINCE --count COUNT``: the lines it printed."""
    out = await cli_ok(
        "subscribe", "--workdir", str(cluster.workdir), "--since", str(since), "--count", str(count), *extra
    )
    return lines_of(out)


@contextlib.asynccontextmanager
async def persistent_session(cluster: Cluster, identifier: str) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT v5 persistent session (clean_start off, an hour's expiry) on the archive's broker."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    async with aiomqtt.Client(
        "127.0.0.1",
        cluster.brokers["archive"].port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        username="subscriber",
        password=login(cluster, "subscriber")[1],
    ) as client:
        yield client


async def test_a_notice_published_to_nobody_is_replayed(make_cluster: MakeCluster) -> None:
    """A file archived while no subscriber listens: ``subscribe --since 0`` prints its arrival, position 1."""
    cluster = await make_cluster()
    [path] = await write_files(cluster, seqnum=1, detectors=[DETECTOR])
    await until(published(cluster, 1))

    [line] = await subscribe_since(cluster, 0, 1)

    [row] = journal_log(cluster)
    assert (line["position"], line["topic"]) == (1, row["topic"])
    assert line["message"]["type"] == "arrival"
    assert line["message"]["name"] == path.name
    assert (line["message"]["notice_id"], line["message"]["position"]) == (row["notice_id"], 1)


async def test_a_notice_lost_by_a_killed_broker_is_replayed(make_cluster: MakeCluster) -> None:
    """The archive's broker SIGKILLed just after it acknowledged a notice queued for an offline persistent
    subscriber: that subscriber never gets it, ``subscribe --since N`` does."""
    cluster = await make_cluster()
    await write_files(cluster, seqnum=1, detectors=[DETECTOR])
    await until(published(cluster, 1))
    since = journal_log(cluster)[-1]["position"]
    identifier = f"test-persistent-{uuid.uuid4().hex[:8]}"
    async with persistent_session(cluster, identifier) as client:
        await client.subscribe(ARRIVALS, qos=1)
    [path] = await write_files(cluster, seqnum=2, detectors=[DETECTOR])
    await until(published(cluster, 2))  # PUBACKed: queued for the offline session
    await cluster.brokers["archive"].kill()
    await cluster.restart_broker("archive")

    async with persistent_session(cluster, identifier) as client:
        lines = await subscribe_since(cluster, since, 1)
        queued = len(client.messages)

    lost = journal_log(cluster)[-1]
    assert queued == 0, "the broker kept its queue through SIGKILL: this test does not test a loss"
    assert [(line["position"], line["message"]["name"]) for line in lines] == [(since + 1, path.name)]
    assert lines[0]["message"]["notice_id"] == lost["notice_id"]


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    """Start ``python -m ops.cli ARGS`` as :func:`conftest.run_cli` does, reading its output as it comes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, first: bytes, timeout_s: float = 60.0) -> tuple[list[Any], str]:
    """Wait for a started CLI to exit 0; every line it printed (``first`` included) and its stderr."""
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"subscribe still running after {timeout_s}s; printed {first + out!r}") from None
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return lines_of((first + out).decode()), err.decode(errors="replace")


def log_events(stderr: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` the CLI wrote on stderr."""
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
    return out


async def test_replay_then_live_prints_each_notice_once_in_order(make_cluster: MakeCluster) -> None:
    """Exposures archived before, during (the command paused mid-replay) and after the replay: all 40
    notices, each once, positions 1..40; the 10 that came both ways were printed once."""
    cluster = await make_cluster()
    for seqnum in (1, 2):
        await write_files(cluster, seqnum=seqnum)
    await until(published(cluster, 20))
    proc = await start_cli(
        "--json-logs", "subscribe", "--workdir", str(cluster.workdir), "--since", "0", "--count", "40",
        "--page-size", "1",
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            first = await proc.stdout.readline()  # subscribed, with 19 pages of the log still to read
        proc.send_signal(signal.SIGSTOP)
        try:
            await write_files(cluster, seqnum=3)
            await until(published(cluster, 30))  # journaled, and delivered into the paused command's connection
        finally:
            proc.send_signal(signal.SIGCONT)
        replayed = [first]
        async with asyncio.timeout(60):
            while len(replayed) < 30:
                replayed.append(await proc.stdout.readline())
        await write_files(cluster, seqnum=4)  # after the replay: live only
        lines, stderr = await finish(proc, b"".join(replayed))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    log = journal_log(cluster)
    [caught_up] = log_events(stderr, "notices_replayed")
    [finished] = log_events(stderr, "subscribe_finished")
    assert len(log) == 40
    assert [line["position"] for line in lines] == list(range(1, 41))
    assert [line["message"]["notice_id"] for line in lines] == [row["notice_id"] for row in log]
    assert all(line["message"]["position"] == line["position"] for line in lines)
    assert [line["topic"] for line in lines] == [row["topic"] for row in log]
    assert caught_up["through"] == 30, "exposure 3 came from the log, exposure 4 live"
    assert finished["repeats"] == 10, "exposure 3 came over MQTT too, and was not printed twice"


async def test_a_follower_rides_out_a_broker_kill_without_a_gap(make_cluster: MakeCluster) -> None:
    """A live follower whose broker is SIGKILLed, and notices published while it is away, prints every one once."""
    cluster = await make_cluster()
    proc = await start_cli(
        "--json-logs", "subscribe", "--workdir", str(cluster.workdir), "--since", "0", "--count", "3"
    )  # fmt: skip
    try:
        await write_files(cluster, seqnum=1, detectors=[DETECTOR])
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            first = await proc.stdout.readline()  # the first arrival, live
        proc.send_signal(signal.SIGSTOP)  # the follower cannot reconnect before the next notices are gone
        try:
            await cluster.brokers["archive"].kill()
            await cluster.restart_broker("archive")
            await write_files(cluster, seqnum=2, detectors=[DETECTOR])
            await write_files(cluster, seqnum=3, detectors=[DETECTOR])
            await until(published(cluster, 3))  # delivered to nobody: the follower's connection died with the broker
        finally:
            proc.send_signal(signal.SIGCONT)
        lines, stderr = await finish(proc, first)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    log = journal_log(cluster)
    assert [line["position"] for line in lines] == [1, 2, 3]
    assert [line["message"]["notice_id"] for line in lines] == [row["notice_id"] for row in log]
    assert log_events(stderr, "broker_lost"), "the follower saw its broker go"
