"""Real faults: SIGKILL of daemons and brokers mid-transfer, and corrupted bytes on a link.

Whatever is killed, every file ends up archived exactly once with the summit's checksum, every
file's arrival notice is received (repeats carry the same notice_id), and nothing is left stuck.
"""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    DAYOBS,
    INSTRUMENT,
    Collector,
    MakeCluster,
    Subscribe,
    arrived_names,
    blake3_of,
    checksums,
    drop_into_inbox,
    read_catalog,
    site_status,
    summit_status,
    until_async,
    wait_settled,
    write_exposures,
    write_files,
)

from ops.camera import write_exposure
from ops.cluster import Cluster

ARRIVALS = "skyrelay/v1/arrivals/#"
FILE_BYTES = 4 * 1024 * 1024
EXPOSURES = (1, 2)
KILL_AFTER_NOTICES = 4  # custody is flowing back and most files are still on their way


async def _assert_all_archived_once(cluster: Cluster, paths: list[Path], notices: Collector) -> None:
    """Every file archived once with the source checksum, announced with a stable notice_id, custody home."""
    sources = await checksums(paths)
    assert len(sources) == len(paths) == 9 * len(EXPOSURES)
    await notices.wait_for(lambda _: set(sources) <= arrived_names(notices), timeout_s=60)
    statuses = await wait_settled(cluster, archived=len(paths), timeout_s=60, wake=notices)
    assert statuses["summit"]["files"] == {"archived": len(paths)}

    catalog = read_catalog(cluster)
    assert sorted(r["name"] for r in catalog) == sorted(sources), "each file catalogued exactly once"
    for row in catalog:
        assert row["status"] == "archived", row
        assert row["checksum"] == sources[row["name"]]
    archived = await asyncio.to_thread(
        lambda: {r["name"]: blake3_of(cluster.archive_root / r["archive_path"]) for r in catalog}
    )
    assert archived == sources
    stored = sorted(p.name for p in (cluster.archive_root / "raw" / INSTRUMENT).rglob("*") if p.is_file())
    assert stored == sorted(sources), "no second copy anywhere under raw/"
    assert not (cluster.archive_root / "quarantine").exists()

    ids_by_name: dict[str, set[str]] = collections.defaultdict(set)
    for notice in notices.of_type("arrival"):
        ids_by_name[notice["name"]].add(notice["notice_id"])
    assert set(ids_by_name) == set(sources)
    unstable = {name: ids for name, ids in ids_by_name.items() if len(ids) != 1}
    assert not unstable, f"a file announced under several notice ids: {unstable}"


async def _kill_and_restart(cluster: Cluster, kind: str, site: str, notices: Collector) -> None:
    if kind == "daemon":
        old_pid = cluster.daemons[site].pid
        await cluster.daemons[site].kill()
        await cluster.restart_daemon(site)
        assert cluster.daemons[site].pid not in (None, old_pid)
    else:
        await cluster.brokers[site].kill()
        await cluster.restart_broker(site)
        if site == "archive":
            # The subscriber lost its broker too; be subscribed again before counting notices.
            async with asyncio.timeout(10):
                await notices.connected.wait()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("kind", "site"),
    [
        ("daemon", "summit"),
        ("daemon", "base"),
        ("daemon", "archive"),
        ("broker", "summit"),
        ("broker", "base"),
        ("broker", "archive"),
    ],
)
async def test_sigkill_mid_transfer_loses_and_duplicates_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe, kind: str, site: str
) -> None:
    """SIGKILL of a daemon or broker mid-transfer, then a restart: every file archived once, announced, custody home."""
    cluster = await make_cluster()
    notices = await subscribe(cluster, "archive", ARRIVALS)
    async with asyncio.TaskGroup() as tg:
        writing = tg.create_task(write_exposures(cluster, EXPOSURES, FILE_BYTES))
        await notices.wait_for(lambda _: len(arrived_names(notices)) >= KILL_AFTER_NOTICES, timeout_s=60)
        in_flight = 9 * len(EXPOSURES) - len(arrived_names(notices))
        await _kill_and_restart(cluster, kind, site, notices)
    assert in_flight > 0, "every file had arrived before the kill; the fault hit nothing"
    await _assert_all_archived_once(cluster, writing.result(), notices)


@pytest.mark.timeout(180)
async def test_corrupted_bytes_on_the_link_are_caught_and_retried(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Bytes corrupted on the summit-archive link are caught as checksum mismatches; every file is re-sent intact."""
    cluster = await make_cluster(routes={"direct": ["summit", "archive"]}, drill=True)
    problems = await subscribe(cluster, "archive", "skyrelay/v1/problems/archive")
    notices = await subscribe(cluster, "archive", ARRIVALS)
    link = cluster.linksim.link("summit-archive")
    await link.set_mode("corrupt", corrupt_probability=1.0)

    paths = await write_files(cluster, seqnum=1, size_bytes=1024 * 1024)
    await problems.wait_for(
        lambda _: any(p["kind"] == "checksum_mismatch" for p in problems.of_type("problem")), timeout_s=60
    )
    assert not arrived_names(notices), "a corrupted file was announced"
    await link.set_mode("up")

    await notices.wait_for(lambda _: {p.name for p in paths} <= arrived_names(notices), timeout_s=90)
    statuses = await wait_settled(cluster, archived=len(paths), timeout_s=90, wake=notices)
    assert statuses["archive"]["counters"]["checksum_mismatch"] >= 1
    assert link.stats()["corrupted_chunks"] >= 1
    sources = await checksums(paths)
    catalog = read_catalog(cluster)
    assert {r["name"]: r["checksum"] for r in catalog} == sources
    assert all(r["status"] == "archived" for r in catalog)
    archived = await asyncio.to_thread(
        lambda: {r["name"]: blake3_of(cluster.archive_root / r["archive_path"]) for r in catalog}
    )
    assert archived == sources
    assert sorted(n["name"] for n in notices.of_type("arrival")) == sorted(sources)


async def test_a_file_with_no_route_to_custody_is_reported_not_silently_stuck(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Only one route and the archive down behind the base: the summit reports the overdue files as a
    problem (one per period, not one per file), keeps them, and they are archived once the archive returns."""
    cluster = await make_cluster(
        routes={"primary": ["summit", "base", "archive"]}, tuning={"end_to_end_timeout_s": 3.0}
    )
    problems = await subscribe(cluster, "summit", "skyrelay/v1/problems/summit")
    notices = await subscribe(cluster, "archive", ARRIVALS)
    await cluster.daemons["archive"].kill()
    paths = await write_files(cluster, seqnum=1, size_bytes=64 * 1024)

    def overdue() -> list[dict[str, Any]]:
        return [p for p in problems.of_type("problem") if p["kind"] == "custody_overdue"]

    await problems.wait_for(lambda _: any(p["details"]["files"] == len(paths) for p in overdue()), timeout_s=30)
    report = overdue()[-1]
    assert report["details"]["routes"] == ["primary"]
    assert "no other usable route" in report["reason"]
    assert len(overdue()) < len(paths), "aggregated, not one problem per file"
    async with aiohttp.ClientSession() as session:
        summit = await site_status(session, cluster, "summit")
    assert summit["custody"] == {"awaiting": len(paths), "stuck": len(paths), "held": 0}

    await cluster.restart_daemon("archive")
    await notices.wait_for(lambda _: {p.name for p in paths} <= arrived_names(notices), timeout_s=60)
    await wait_settled(cluster, archived=len(paths), timeout_s=60, wake=notices)
    assert sorted(r["name"] for r in read_catalog(cluster)) == sorted(p.name for p in paths)


async def test_a_file_rewritten_before_it_left_is_sent_in_its_latest_version_only(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path
) -> None:
    """The camera rewrites a file, then rewrites it back, while no site can take it yet. Each version gone
    from disk is retired with a source_replaced problem instead of being retried forever; the version
    back on disk is sent again; exactly the latest content is archived."""
    cluster = await make_cluster()
    problems = await subscribe(cluster, "summit", "skyrelay/v1/problems/summit")
    notices = await subscribe(cluster, "archive", ARRIVALS)
    for site in ("base", "archive"):  # no first hop can take the file
        await cluster.daemons[site].kill()

    async def first_hops_gone() -> bool:  # (killed just after start-up, a peer may still look online a moment)
        links = (await summit_status(cluster))["links"]
        return not any(links[site]["connected"] and links[site]["peer_online"] for site in ("base", "archive"))

    await until_async(first_hops_gone, 15, "the summit sees that neither first hop is there")
    versions = [
        await asyncio.to_thread(
            write_exposure, tmp_path / version, INSTRUMENT, dayobs=DAYOBS, seqnum=1, size_bytes=size,
            detectors=["R22_S11"],
        )
        for version, size in (("v1", 64 * 1024), ("v2", 96 * 1024))
    ]  # fmt: skip
    (first,), (second,) = versions
    assert first.name == second.name
    name, a, b = first.name, blake3_of(first), blake3_of(second)
    saved_a = await asyncio.to_thread(first.read_bytes)

    def replaced() -> list[tuple[str, str]]:
        found = [p for p in problems.of_type("problem") if p["kind"] == "source_replaced" and p["name"] == name]
        return [(p["details"]["old_checksum"], p["details"]["new_checksum"]) for p in found]

    await asyncio.to_thread(os.replace, first, cluster.inbox / name)
    # With both first hops gone the summit registers the file (hashed, journaled) and holds it, saying so.
    await problems.wait_for(
        lambda _: any(
            p["kind"] == "no_route" and name in p["details"]["examples"] for p in problems.of_type("problem")
        ),
        timeout_s=15,
    )
    async with aiohttp.ClientSession() as session:
        held = (await site_status(session, cluster, "summit"))["files"]
    assert held == {"held": 1}, f"the summit never registered the first version: {held}"
    await asyncio.to_thread(os.replace, second, cluster.inbox / name)  # the camera's rewrite: write, rename
    await problems.wait_for(lambda _: replaced() == [(a, b)], timeout_s=30)
    await asyncio.to_thread(drop_into_inbox, cluster, name, saved_a)  # and back to the first content
    await problems.wait_for(lambda _: replaced() == [(a, b), (b, a)], timeout_s=30)

    for site in ("base", "archive"):
        await cluster.restart_daemon(site)
    statuses = await wait_settled(cluster, archived=1, replaced=1, wake=notices, timeout_s=60)
    assert statuses["summit"]["counters"]["replaced"] == 2
    (row,) = read_catalog(cluster)
    assert (row["name"], row["checksum"]) == (name, a)
    assert await asyncio.to_thread(blake3_of, cluster.archive_root / row["archive_path"]) == a
    assert [n["checksum"] for n in notices.of_type("arrival")] == [a]
