"""Crash tests for the batched small-file path: group commits in the journal, concurrent dispatch, and
mailbox batches (several offers, acks or custody hops in one signed publish).

A burst of small files keeps several journal transactions in each COMMIT and several messages in
flight at once, most of them in batches; a SIGKILL of the receiving archive, of the receiving and
forwarding base, or of the sending summit in the middle of that, then a restart, must leave every
file archived exactly once with the summit's checksum, announced under one notice id, and its
custody back at the summit.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from conftest import (
    INSTRUMENT,
    MakeCluster,
    Subscribe,
    arrived_names,
    blake3_of,
    checksums,
    read_catalog,
    wait_settled,
    write_exposures,
)

from ops.bench.workloads import mailbox_traffic

ARRIVALS = "skyrelay/v1/arrivals/#"
EXPOSURES = range(1, 11)  # 10 x 9 = 90 files: some still in flight at the kill, with 16 pulls at once
FILE_BYTES = 48 * 1024
KILL_AFTER_NOTICES = 8


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("site", "route"),
    [("archive", ["summit", "archive"]), ("summit", ["summit", "archive"]), ("base", ["summit", "base", "archive"])],
)
async def test_sigkill_in_the_middle_of_a_small_file_batch_loses_and_duplicates_nothing(
    make_cluster: MakeCluster, subscribe: Subscribe, site: str, route: list[str]
) -> None:
    """SIGKILL of the receiver (archive; base, which also forwards) or the sender (summit) while a burst
    of small files travels in mailbox batches, then a restart: each file is catalogued once with the
    summit's checksum, stored once under raw/, announced under a single notice id, and the summit holds
    custody of every one."""
    cluster = await make_cluster(routes={"route": route})
    notices = await subscribe(cluster, "archive", ARRIVALS)
    paths = await write_exposures(cluster, EXPOSURES, FILE_BYTES)
    await notices.wait_for(lambda _: len(arrived_names(notices)) >= KILL_AFTER_NOTICES, timeout_s=90)
    old_pid = cluster.daemons[site].pid
    in_flight = len(paths) - len(arrived_names(notices))  # (counted at the kill)
    await cluster.daemons[site].kill()
    traffic = await mailbox_traffic(cluster)  # (the surviving sites' counters: the killed one is skipped)
    assert any(t["messages"] > t["publishes"] for t in traffic.values()), f"no batch before the kill: {traffic}"
    await cluster.restart_daemon(site)
    assert cluster.daemons[site].pid not in (None, old_pid)
    assert in_flight > 0, "every file had arrived before the kill; the fault hit nothing"

    sources = await checksums(paths)
    assert len(sources) == len(paths) == 9 * len(EXPOSURES)
    await notices.wait_for(lambda _: set(sources) <= arrived_names(notices), timeout_s=120)
    statuses = await wait_settled(cluster, archived=len(paths), timeout_s=120, wake=notices)
    assert statuses["summit"]["files"] == {"archived": len(paths)}, "custody of every file came back"

    catalog = read_catalog(cluster)
    assert sorted(r["name"] for r in catalog) == sorted(sources), "each file catalogued exactly once"
    assert all(r["status"] == "archived" and r["checksum"] == sources[r["name"]] for r in catalog)
    archived = await asyncio.to_thread(
        lambda: {r["name"]: blake3_of(cluster.archive_root / r["archive_path"]) for r in catalog}
    )
    assert archived == sources
    stored = sorted(p.name for p in (cluster.archive_root / "raw" / INSTRUMENT).rglob("*") if p.is_file())
    assert stored == sorted(sources), "no second copy anywhere under raw/"

    ids_by_name: dict[str, set[str]] = collections.defaultdict(set)
    for notice in notices.of_type("arrival"):
        ids_by_name[notice["name"]].add(notice["notice_id"])
    assert {name: ids for name, ids in ids_by_name.items() if len(ids) != 1} == {}
