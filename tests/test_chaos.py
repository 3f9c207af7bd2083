"""A chaos run: files pour in while daemons and brokers are SIGKILLed at random, and nothing is lost or doubled.

One real cluster (three mosquittos, three daemon processes). A camera writes 100 files of 2 MB over a
minute while a seeded random schedule SIGKILLs 15 times a daemon or a broker (each of the six at least
twice) and starts it again after a short random delay. At the end every file is in the archive exactly
once with the camera's checksum (catalog and the archived bytes), the archive published one arrival
notice per file, and ``skyrelay subscribe --since 0`` replays every one of them. The run's figures are
printed as one JSON line (``CHAOS {...}``) for the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import (
    INSTRUMENT,
    SITES,
    MakeCluster,
    blake3_of,
    checksums,
    cli_ok,
    query_journal,
    read_catalog,
    wait_settled,
    write_files,
)

from ops.cluster import Cluster
from processors.detectors import expected_detectors

pytestmark = pytest.mark.timeout(300)

SEED = 20250601
FILES = 100
FILE_BYTES = 2_000_000
WRITE_SPAN_S = 60.0
KILLS = 15
PAUSE_BEFORE_KILL_S = (1.0, 3.0)
DOWN_FOR_S = (0.2, 2.0)
SETTLE_TIMEOUT_S = 150.0

Part = Literal["daemon", "broker"]
TARGETS: tuple[tuple[Part, str], ...] = tuple((part, site) for part in ("daemon", "broker") for site in SITES)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    """One SIGKILL of the run: what, when (seconds after the start), and how long it stayed down."""

    part: Part
    site: str
    at_s: float
    down_s: float


def kill_plan(rng: random.Random) -> list[tuple[Part, str]]:
    """``KILLS`` targets in a seeded random order, each daemon and each broker at least twice."""
    plan = [*TARGETS, *TARGETS]
    plan += rng.sample(TARGETS, KILLS - len(plan))
    rng.shuffle(plan)
    return plan


def exposures() -> list[list[str]]:
    """The detectors of each exposure the camera writes: full ComCam exposures, then the rest of ``FILES``."""
    detectors = sorted(expected_detectors(INSTRUMENT))
    full, rest = divmod(FILES, len(detectors))
    return [detectors] * full + ([detectors[:rest]] if rest else [])


async def camera(cluster: Cluster, t0: float) -> dict[str, str]:
    """Write every exposure, evenly spread over ``WRITE_SPAN_S``; return name -> checksum of each file."""
    loop = asyncio.get_running_loop()
    plan = exposures()
    interval_s = WRITE_SPAN_S / len(plan)
    sources: dict[str, str] = {}
    for index, detectors in enumerate(plan):
        await asyncio.sleep(max(0.0, t0 + index * interval_s - loop.time()))  # the camera's cadence
        paths = await write_files(cluster, seqnum=index + 1, size_bytes=FILE_BYTES, detectors=detectors)
        sources.update(await checksums(paths))
    return sources


async def chaos(cluster: Cluster, rng: random.Random, t0: float) -> list[Kill]:
    """SIGKILL the planned targets one after another, each started again after a random delay."""
    loop = asyncio.get_running_loop()
    kills: list[Kill] = []
    for part, site in kill_plan(rng):
        await asyncio.sleep(rng.uniform(*PAUSE_BEFORE_KILL_S))
        down_s = rng.uniform(*DOWN_FOR_S)
        at_s = loop.time() - t0
        if part == "daemon":
            await cluster.daemons[site].kill()
        else:
            await cluster.brokers[site].kill()
        await asyncio.sleep(down_s)  # the outage itself
        if part == "daemon":
            await cluster.restart_daemon(site)
        else:
            await cluster.restart_broker(site)
        kills.append(Kill(part=part, site=site, at_s=round(at_s, 2), down_s=round(down_s, 2)))
    return kills


def archived_checksums(cluster: Cluster, catalog: list[dict[str, Any]]) -> dict[str, str]:
    """name -> blake3 of the file the archive holds for each catalog row (blocking)."""
    return {row["name"]: blake3_of(cluster.archive_root / row["archive_path"]) for row in catalog}


def archive_files(cluster: Cluster) -> list[Path]:
    """Every FITS file under the archive's ``raw/`` tree (blocking)."""
    return sorted((cluster.archive_root / "raw").rglob("*.fits"))


def notice_body(payload: Any) -> dict[str, Any]:
    """A journaled notice's message (unwrapped when the archive signed it)."""
    data: dict[str, Any] = json.loads(payload)
    if {"signer", "body", "sig"} <= set(data):
        inner: dict[str, Any] = json.loads(data["body"])
        return inner
    return data


async def test_files_survive_random_kills_of_daemons_and_brokers(make_cluster: MakeCluster) -> None:
    """100 files of 2 MB written over a minute under 15 seeded random SIGKILLs of daemons and brokers are
    each archived exactly once with the camera's checksum, and every arrival notice replays with
    ``subscribe --since 0``."""
    cluster = await make_cluster()
    rng = random.Random(SEED)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with asyncio.TaskGroup() as tg:
        written = tg.create_task(camera(cluster, t0), name="chaos.camera")
        killed = tg.create_task(chaos(cluster, rng, t0), name="chaos.kills")
    sources, kills = written.result(), killed.result()
    chaos_s = loop.time() - t0
    assert len(sources) == FILES

    await wait_settled(cluster, archived=FILES, timeout_s=SETTLE_TIMEOUT_S)
    settled_s = loop.time() - t0

    catalog = read_catalog(cluster)
    assert sorted(r["name"] for r in catalog) == sorted(sources), "a file is missing from the catalog or doubled"
    assert {r["name"]: r["checksum"] for r in catalog} == sources
    on_disk = await asyncio.to_thread(archived_checksums, cluster, catalog)
    assert on_disk == {r["name"]: r["archived_checksum"] for r in catalog}
    assert on_disk == sources, "an archived file's bytes differ from the camera's"
    stored = await asyncio.to_thread(archive_files, cluster)
    assert sorted(p.name for p in stored) == sorted(sources), "the archive holds a file twice or a stray file"

    logged = query_journal(cluster, "archive", "SELECT rowid AS position, topic, payload FROM notices ORDER BY rowid")
    arrivals = [notice_body(r["payload"]) for r in logged if r["topic"].startswith("skyrelay/v1/arrivals/")]
    arrival_names = [n["name"] for n in arrivals if n.get("type") == "arrival"]
    assert sorted(arrival_names) == sorted(sources), "not one arrival notice per file"

    count = len(arrivals)  # arrivals and exposure notices: everything under the default topic filter
    out = await cli_ok("subscribe", "--workdir", str(cluster.workdir), "--since", "0", "--count", str(count))
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    replayed = [line["message"]["name"] for line in lines if line["message"].get("type") == "arrival"]
    assert sorted(replayed) == sorted(sources), "subscribe --since 0 did not replay every arrival once"
    assert [line["position"] for line in lines] == sorted({line["position"] for line in lines})

    duplicates = query_journal(cluster, "archive", "SELECT COUNT(*) AS n FROM inbound WHERE status = 'duplicate'")
    restarts = {site: cluster.daemons[site].restarts for site in SITES}
    by_target: dict[str, int] = {}
    for kill in kills:
        by_target[f"{kill.part}:{kill.site}"] = by_target.get(f"{kill.part}:{kill.site}", 0) + 1
    figures = {
        "seed": SEED,
        "files": FILES,
        "file_bytes": FILE_BYTES,
        "kills": len(kills),
        "kills_by_target": by_target,
        "daemon_restarts": restarts,
        "chaos_s": round(chaos_s, 1),
        "settled_after_s": round(settled_s, 1),
        "archived": len(catalog),
        "archived_twice": len(catalog) - len({r["name"] for r in catalog}),
        "duplicate_offers_answered": int(duplicates[0]["n"]),
        "arrival_notices": len(arrival_names),
        "replayed_lines": len(lines),
        "schedule": [dataclasses.asdict(k) for k in kills],
    }
    print("CHAOS " + json.dumps(figures, sort_keys=True))
    assert len(kills) == KILLS
