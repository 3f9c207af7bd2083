"""Custody end to end: files written at the summit end up archived, catalogued, announced, and acknowledged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DAYOBS,
    INSTRUMENT,
    Collector,
    MakeCluster,
    Subscribe,
    blake3_of,
    checksums,
    drop_into_inbox,
    obsid_of,
    query_journal,
    read_catalog,
    wait_settled,
    write_files,
)

from ops.cluster import Cluster

pytestmark = pytest.mark.timeout(120)

ARRIVALS = "skyrelay/v1/arrivals/#"
PUBLIC_FIELDS = {
    "obsid",
    "instrument",
    "detector",
    "name",
    "size",
    "checksum",
    "archive_path",
    "arrived_at",
    "latency_s",
    "notice_id",
    "route",
}


def _names(notices: list[dict[str, Any]]) -> set[str]:
    return {n["name"] for n in notices}


async def _wait_notices(collector: Collector, names: set[str], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Wait until an arrival notice was received for each of ``names``."""
    await collector.wait_for(lambda _: names <= _names(collector.of_type("arrival")), timeout_s=timeout_s)
    return collector.of_type("arrival")


async def _assert_exposure_archived(
    cluster: Cluster, paths: list[Path], notices_in: Collector, *, seqnum: int, routes: set[str]
) -> None:
    """The exposure's files are in the archive, catalogued, announced once each, and custody is home."""
    sources = await checksums(paths)
    obsid = obsid_of(seqnum)
    notices = await _wait_notices(notices_in, set(sources))
    statuses = await wait_settled(cluster, archived=len(paths), wake=notices_in)

    exposure_dir = cluster.archive_root / "raw" / INSTRUMENT / DAYOBS / obsid
    assert sorted(p.name for p in exposure_dir.iterdir()) == sorted(sources)
    for name, checksum in sources.items():
        assert blake3_of(exposure_dir / name) == checksum, name

    catalog = read_catalog(cluster)
    assert [row["name"] for row in catalog] == sorted(sources)
    for row in catalog:
        assert row["status"] == "archived"
        assert row["checksum"] == sources[row["name"]]
        assert row["archive_path"] == f"raw/{INSTRUMENT}/{DAYOBS}/{obsid}/{row['name']}"

    notices = notices_in.of_type("arrival")
    assert sorted(n["name"] for n in notices) == sorted(sources), "exactly one arrival notice per file"
    assert len({n["notice_id"] for n in notices}) == len(notices)
    for notice in notices:
        assert set(notice) >= PUBLIC_FIELDS, PUBLIC_FIELDS - set(notice)
        name = notice["name"]
        assert notice["obsid"] == obsid
        assert notice["instrument"] == INSTRUMENT
        assert name.endswith(f"_{notice['detector']}.fits")
        assert notice["size"] == paths[0].parent.joinpath(name).stat().st_size
        assert notice["checksum"] == sources[name]
        assert notice["archive_path"] == f"raw/{INSTRUMENT}/{DAYOBS}/{obsid}/{name}"
        assert (cluster.archive_root / notice["archive_path"]).is_file()
        assert notice["arrived_at"] >= notice["closed_at"]
        assert notice["latency_s"] >= 0
        assert notice["route"] in routes

    assert statuses["summit"]["files"] == {"archived": len(paths)}
    custody = query_journal(cluster, "summit", "SELECT name, custody_status, archive_path FROM files")
    assert {r["name"]: (r["custody_status"], r["archive_path"]) for r in custody} == {
        name: ("archived", f"raw/{INSTRUMENT}/{DAYOBS}/{obsid}/{name}") for name in sources
    }


async def test_exposure_is_archived_announced_and_custody_returns_to_the_summit(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """An exposure's 9 files are archived with the summit's checksums, announced once each; custody comes home."""
    notices = await subscribe(cluster, "archive", ARRIVALS)
    paths = await write_files(cluster, seqnum=1, size_bytes=512 * 1024)
    assert len(paths) == 9
    await _assert_exposure_archived(cluster, paths, notices, seqnum=1, routes=set(cluster.routes))


async def test_direct_only_cluster_archives_an_exposure(make_cluster: MakeCluster, subscribe: Subscribe) -> None:
    """With only the direct summit → archive route, an exposure still arrives complete with custody."""
    cluster = await make_cluster(routes={"direct": ["summit", "archive"]})
    notices = await subscribe(cluster, "archive", ARRIVALS)
    paths = await write_files(cluster, seqnum=2, size_bytes=512 * 1024)
    await _assert_exposure_archived(cluster, paths, notices, seqnum=2, routes={"direct"})


async def test_same_file_renamed_into_the_inbox_twice_is_archived_once(cluster: Cluster, subscribe: Subscribe) -> None:
    """The same bytes appearing again under the same name give one catalog row and one arrival notice."""
    notices = await subscribe(cluster, "archive", ARRIVALS)
    (first,) = await write_files(cluster, seqnum=3, detectors=["R22_S11"])
    await _wait_notices(notices, {first.name})

    data = first.read_bytes()
    again = drop_into_inbox(cluster, first.name, data)  # a new rename, a new mtime, the same content
    assert again == first
    # A later file, registered after the repeat (the summit registers in arrival order), proves the
    # repeat was seen; its custody returning proves nothing else is on its way.
    (sentinel,) = await write_files(cluster, seqnum=3, detectors=["R22_S12"])
    await _wait_notices(notices, {sentinel.name})
    await wait_settled(cluster, archived=2, wake=notices)

    rows = [r for r in read_catalog(cluster) if r["name"] == first.name]
    assert len(rows) == 1
    assert rows[0]["checksum"] == blake3_of(first)
    assert [n["name"] for n in notices.of_type("arrival")].count(first.name) == 1
    journaled = query_journal(
        cluster, "archive", "SELECT notice_id FROM notices WHERE file_key LIKE ?", (f"%/{first.name}",)
    )
    assert len(journaled) == 1


async def test_non_fits_file_is_quarantined_with_a_reason(cluster: Cluster, subscribe: Subscribe) -> None:
    """A non-FITS file is archived under quarantine/ with its reason, reported on problems/archive, never announced."""
    problems = await subscribe(cluster, "archive", "skyrelay/v1/problems/archive")
    notices = await subscribe(cluster, "archive", ARRIVALS)
    data = b"observing log, not an image\n" * 200
    drop_into_inbox(cluster, "notes.txt", data)

    await problems.wait_for(
        lambda _: any(p["kind"] == "quarantined" and p["name"] == "notes.txt" for p in problems.of_type("problem")),
        timeout_s=30,
    )
    await wait_settled(cluster, archived=1, wake=problems)

    (row,) = read_catalog(cluster)
    assert row["name"] == "notes.txt"
    assert row["status"] == "quarantined"
    assert row["reason"] and row["reason"].startswith("not_fits")
    assert row["archive_path"].startswith("quarantine/")
    assert (cluster.archive_root / row["archive_path"]).read_bytes() == data
    assert not (cluster.archive_root / "raw").exists()
    problem = next(p for p in problems.of_type("problem") if p["kind"] == "quarantined")
    assert problem["reason"].startswith("not_fits")
    assert problem["details"]["archive_path"] == row["archive_path"]
    assert query_journal(cluster, "archive", "SELECT * FROM notices") == []
    assert notices.of_type("arrival") == []
    (summit_row,) = query_journal(cluster, "summit", "SELECT state, custody_status, archive_path FROM files")
    assert summit_row == {"state": "archived", "custody_status": "quarantined", "archive_path": row["archive_path"]}


async def test_same_bytes_under_a_second_inbox_path_do_not_stop_the_archive(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """The same bytes under a second inbox path (same basename) are accounted for; the archive keeps running."""
    notices = await subscribe(cluster, "archive", ARRIVALS)
    (first,) = await write_files(cluster, seqnum=4, detectors=["R22_S11"])
    await _wait_notices(notices, {first.name})
    archive_pid = cluster.daemons["archive"].pid

    (cluster.inbox / "again").mkdir()
    drop_into_inbox(cluster, f"again/{first.name}", first.read_bytes())
    await wait_settled(cluster, archived=2, wake=notices)

    assert cluster.daemons["archive"].pid == archive_pid, "the archive daemon died"
    catalog = read_catalog(cluster)
    assert sorted(r["name"] for r in catalog) == sorted([first.name, f"again/{first.name}"])
    assert len({r["archive_path"] for r in catalog}) == 2
    original = next(r for r in catalog if r["name"] == first.name)
    assert original["status"] == "archived"
    assert blake3_of(cluster.archive_root / original["archive_path"]) == blake3_of(first)
