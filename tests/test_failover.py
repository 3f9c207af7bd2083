"""Failover drills: real brokers, real daemons, faults injected in the link simulator.

Every test asserts what an operator and an alert subscriber see: each file archived exactly once
with the summit's checksum, announced once, custody home at the summit, nothing left pending, and
the routing decisions reported on ``events/summit``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from conftest import (
    DRILL_TUNING,
    Collector,
    MakeCluster,
    Subscribe,
    blake3_of,
    checksums,
    cli_ok,
    query_journal,
    read_catalog,
    site_status,
    wait_settled,
    write_files,
)

from ops.cluster import Cluster
from ops.linksim import Link, link_name

pytestmark = pytest.mark.timeout(150)

ARRIVALS = "skyrelay/v1/arrivals/#"
SUMMIT_EVENTS = "skyrelay/v1/events/summit"
ARCHIVE_PROBLEMS = "skyrelay/v1/problems/archive"

TUNING = DRILL_TUNING
E2E_S = TUNING["end_to_end_timeout_s"]
HOLD_DOWN_S = TUNING["breaker_hold_down_s"]
KEEPALIVE_S = TUNING["mqtt_keepalive_s"]
MAILBOX_RECONNECT_CAP_S = 5.0  # daemon/mailbox.py caps the link reconnect backoff at 5 s whatever the tuning
TRANSFER_ALLOWANCE_S = 6.0  # pull, fsync, header check, catalog and notice of a few small files on 2 cores
# Once a fault is gone: reconnect, one capped retry, one end-to-end deadline (the backstop), the transfer.
RECOVERY_S = MAILBOX_RECONNECT_CAP_S + TUNING["backoff_max_s"] + E2E_S + TRANSFER_ALLOWANCE_S
SMALL = 128 * 1024
DETECTORS_3 = ["R22_S00", "R22_S11", "R22_S22"]


# ---- helpers --------------------------------------------------------------------------------


async def expose(
    cluster: Cluster, seqnum: int, *, size_bytes: int = SMALL, detectors: Sequence[str] | None = None
) -> dict[str, str]:
    """Write one exposure into the summit inbox; return file name → blake3 of what the camera wrote."""
    paths = await write_files(cluster, seqnum=seqnum, size_bytes=size_bytes, detectors=detectors)
    return await checksums(paths)


def arrivals(notices: Collector) -> dict[str, list[dict[str, Any]]]:
    """Arrival notices received so far, by file name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for notice in notices.of_type("arrival"):
        out.setdefault(notice["name"], []).append(notice)
    return out


def routes_taken(notices: Collector, names: set[str]) -> dict[str, str]:
    """File name → the route its (first) arrival notice says it took."""
    seen = arrivals(notices)
    return {name: seen[name][0]["route"] for name in names if name in seen}


async def wait_arrived(notices: Collector, names: set[str], timeout_s: float) -> None:
    """Wait until an arrival notice was received for each of ``names``."""
    await notices.wait_for(lambda _: names <= set(arrivals(notices)), timeout_s=timeout_s)


def events_of(events: Collector, *kinds: str) -> list[dict[str, Any]]:
    """Summit events of the given kinds, in order."""
    return [e for e in events.of_type("event") if e["kind"] in kinds]


def decided_direct(events: Collector) -> bool:
    """Whether the summit reported moving files, or new files, to the direct route."""
    return any(
        (e["kind"] == "failover" and e["details"].get("new_route") == "direct")
        or (e["kind"] == "route_changed" and e["details"].get("route") == "direct")
        for e in events.of_type("event")
    )


def assert_archived_exactly_once(cluster: Cluster, notices: Collector, sources: dict[str, str]) -> None:
    """Each file has exactly one catalog row and one notice, and the archived bytes are the camera's."""
    catalog = read_catalog(cluster)
    rows = Counter(row["name"] for row in catalog)
    expected = Counter(sources.keys())
    assert rows == expected, f"catalog is not one row per file: extra {rows - expected}, missing {expected - rows}"
    for row in catalog:
        assert row["status"] == "archived", row
        assert row["checksum"] == sources[row["name"]], row["name"]
        assert blake3_of(cluster.archive_root / row["archive_path"]) == sources[row["name"]], row["name"]
    seen = arrivals(notices)
    assert {name: len(seen.get(name, [])) for name in sources} == dict.fromkeys(sources, 1), "one notice per file"
    assert set(seen) == set(sources), f"notices for files never written: {set(seen) - set(sources)}"
    for name, (notice,) in seen.items():
        assert notice["checksum"] == sources[name], name


async def probe_until(
    condition: Callable[[], bool], probe: Callable[[], Awaitable[None]], wake: Collector, *, bound_s: float, what: str
) -> None:
    """Write a probe file about once a second (camera pacing) until ``condition`` holds; woken by ``wake``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not condition():
        assert loop.time() < deadline, f"{what}: not within {bound_s:.0f}s"
        await probe()
        await wake.next_message(1.0)


async def summit_linked(cluster: Cluster, subscribe: Subscribe) -> None:
    """Wait until the whole primary route is up as the summit sees it.

    A daemon is ready once its own mailbox is; its links to peers come up just after. Without this
    wait an exposure written at once could find the summit not yet linked to the base, or the base
    not yet linked to the archive (which it reports in its presence), and legitimately take direct.
    A bounded settle check: re-reads the summit's status after each presence message or every 0.2 s.
    """
    for peer in ("base", "archive"):
        presence = await subscribe(cluster, peer, "skyrelay/v1/presence/summit")
        await presence.wait_for(
            lambda msgs: any(isinstance(m.data, dict) and m.data.get("state") == "online" for m in msgs), timeout_s=15
        )
    base_presence = await subscribe(cluster, "base", "skyrelay/v1/presence/base")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    async with aiohttp.ClientSession() as session:
        while True:
            status = await site_status(session, cluster, "summit")
            if all(r["healthy"] for r in status["routes"]):
                return
            assert loop.time() < deadline, f"the summit never saw every route healthy: {status['routes']}"
            await base_presence.next_message(0.2)


class Drill:
    """A cluster whose links all pass through the link simulator, with the collectors the tests read."""

    def __init__(self, cluster: Cluster, notices: Collector, events: Collector) -> None:
        self.cluster = cluster
        self.notices = notices
        self.events = events

    def link(self, a: str, b: str) -> Link:
        link: Link = self.cluster.linksim.link(link_name(a, b))
        return link


DrillFactory = Callable[..., Awaitable[Drill]]


@pytest.fixture
async def drill(make_cluster: MakeCluster, subscribe: Subscribe) -> DrillFactory:
    """``await drill()``: a drill cluster with the failover tuning, arrival notices and summit events collected."""

    async def factory(**tuning: float) -> Drill:
        cluster = await make_cluster(drill=True, tuning={**TUNING, **tuning})
        notices = await subscribe(cluster, "archive", ARRIVALS)
        events = await subscribe(cluster, "summit", SUMMIT_EVENTS)
        await summit_linked(cluster, subscribe)
        return Drill(cluster, notices, events)

    return factory


# ---- tests ----------------------------------------------------------------------------------


async def test_cut_summit_base_mid_exposure_fails_over_to_direct_and_fails_back(drill: DrillFactory) -> None:
    """Cutting summit-base mid-exposure archives each file once, late ones direct; primary returns after hold-down."""
    # On a 20 Mbit/s link a 2 MB file takes ~1 s alone, several when four pulls share it: allow for
    # that in the ack deadline so the slowness itself does not open the breaker before the cut.
    d = await drill(ack_timeout_per_mb_s=3.0)
    summit_base = d.link("summit", "base")
    await summit_base.set_mode("slow", mbps=20)  # ~2 MB files then take seconds to cross
    sources = await expose(d.cluster, 1, size_bytes=2_000_000)

    await d.notices.wait_for(1, timeout_s=30)
    await summit_base.set_mode("cut")
    before_cut = set(arrivals(d.notices))
    assert before_cut < set(sources), "the whole exposure crossed before the cut; nothing was in flight"

    await wait_arrived(d.notices, set(sources), timeout_s=RECOVERY_S)
    taken = routes_taken(d.notices, set(sources))
    assert all(taken[name] == "primary" for name in before_cut), taken
    assert "direct" in taken.values(), f"nothing went around the cut: {taken}"
    assert decided_direct(d.events), f"no failover decision on events/summit: {events_of(d.events, 'route_changed')}"
    assert_archived_exactly_once(d.cluster, d.notices, sources)

    restored_after = len(d.events.of_type("event"))
    restored_at = time.time()
    await summit_base.set_mode("up")
    await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert_archived_exactly_once(d.cluster, d.notices, sources)

    # Failback: probe with single files until the summit says new files take primary again.
    seqnum = 2

    def back_on_primary() -> bool:
        later = d.events.of_type("event")[restored_after:]
        return any(e["kind"] == "route_changed" and e["details"].get("route") == "primary" for e in later)

    async def probe() -> None:
        nonlocal seqnum
        sources.update(await expose(d.cluster, seqnum, detectors=["R22_S11"]))
        seqnum += 1

    await probe_until(
        back_on_primary,
        probe,
        d.events,
        bound_s=MAILBOX_RECONNECT_CAP_S + 2 * HOLD_DOWN_S + E2E_S,
        what="failback to primary",
    )
    failback = next(e for e in d.events.of_type("event")[restored_after:] if e["kind"] == "route_changed")
    assert failback["details"]["route"] == "primary", failback
    assert failback["at"] - restored_at >= HOLD_DOWN_S, "failed back before the hold-down passed"
    after = await expose(d.cluster, 100)
    sources.update(after)
    await wait_arrived(d.notices, set(sources), timeout_s=RECOVERY_S)
    assert set(routes_taken(d.notices, set(after)).values()) == {"primary"}, routes_taken(d.notices, set(after))
    await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert_archived_exactly_once(d.cluster, d.notices, sources)


async def test_base_killed_mid_relay_files_go_direct_and_restarted_base_drains_without_duplicates(
    drill: DrillFactory,
) -> None:
    """A base killed mid-relay costs nothing: its files go direct, and once restarted it drains without duplicates."""
    d = await drill()
    await d.link("base", "archive").set_mode("slow", mbps=16)  # files pile up at the base
    sources = await expose(d.cluster, 1, size_bytes=1_000_000)

    await d.notices.wait_for(1, timeout_s=30)
    await d.cluster.daemons["base"].kill()  # SIGKILL
    before_kill = set(arrivals(d.notices))
    assert before_kill < set(sources), "the whole exposure crossed before the kill"

    await wait_arrived(d.notices, set(sources), timeout_s=RECOVERY_S)
    taken = routes_taken(d.notices, set(sources))
    assert "direct" in taken.values(), f"nothing went around the dead base: {taken}"
    assert_archived_exactly_once(d.cluster, d.notices, sources)

    await d.cluster.restart_daemon("base")
    statuses = await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert statuses["base"]["pending"] == 0
    assert_archived_exactly_once(d.cluster, d.notices, sources)

    base_files = query_journal(d.cluster, "base", "SELECT name, state FROM files")
    held_then_direct = {r["name"] for r in base_files if taken.get(r["name"]) == "direct"}
    assert held_then_direct, f"the base held none of the files that went direct: {base_files}, {taken}"
    assert [r for r in base_files if r["state"] == "held"] == [], "the restarted base still holds files"


async def test_flapping_summit_base_link_loses_and_duplicates_nothing(drill: DrillFactory) -> None:
    """A summit-base link flapping every 2 s for 30 s under a steady camera loses, duplicates and strands no file."""
    d = await drill()
    summit_base = d.link("summit", "base")
    sources: dict[str, str] = {}
    first: dict[str, str] = {}
    cuts: list[float] = []

    async def flap() -> None:
        for i in range(15):
            await asyncio.sleep(2.0)  # the flap schedule
            if i % 2 == 0:
                cuts.append(time.time())
            await summit_base.set_mode("cut" if i % 2 == 0 else "up")
        await summit_base.set_mode("up")

    async def camera() -> None:
        for seqnum in range(1, 11):
            exposure = await expose(d.cluster, seqnum, size_bytes=64 * 1024, detectors=DETECTORS_3)
            first.update(exposure if seqnum == 1 else {})
            sources.update(exposure)
            await asyncio.sleep(3.0)  # the camera cadence

    async with asyncio.TaskGroup() as tg:
        tg.create_task(flap(), name="test.flap")
        tg.create_task(camera(), name="test.camera")

    await wait_arrived(d.notices, set(sources), timeout_s=RECOVERY_S)
    statuses = await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert statuses["summit"]["files"] == {"archived": len(sources)}
    assert_archived_exactly_once(d.cluster, d.notices, sources)
    assert set(routes_taken(d.notices, set(first)).values()) == {"primary"}, "the link was up for the first exposure"
    assert decided_direct(d.events), "the cuts never moved traffic to direct"
    # Up-periods (2 s) never outlast the failback hold-down (3 s): traffic must not follow the flapping.
    flapped_back = [
        e
        for e in events_of(d.events, "route_changed")
        if e["details"]["route"] == "primary" and cuts[0] < e["at"] < cuts[-1]
    ]
    assert flapped_back == [], "new files went back to primary while the link was still flapping"


async def test_corrupted_base_archive_link_is_detected_retried_and_archives_correct_bytes(
    drill: DrillFactory, subscribe: Subscribe
) -> None:
    """Bit flips on base-archive are caught as checksum mismatches, retried, and only correct bytes are archived."""
    d = await drill()
    problems = await subscribe(d.cluster, "archive", ARCHIVE_PROBLEMS)
    base_events = await subscribe(d.cluster, "base", "skyrelay/v1/events/base")
    base_archive = d.link("base", "archive")
    await base_archive.set_mode("corrupt", corrupt_probability=1.0)
    sources = await expose(d.cluster, 1, size_bytes=512 * 1024)

    def mismatched() -> Counter[str]:
        return Counter(p["name"] for p in problems.of_type("problem") if p["kind"] == "checksum_mismatch")

    await problems.wait_for(lambda _: sum(mismatched().values()) >= 2, timeout_s=15)
    await base_events.wait_for(
        lambda _: any(e["kind"] == "breaker_open" for e in base_events.of_type("event")), timeout_s=15
    )
    # Keep corrupting through one hold-down, so a half-open probe meets the corruption too.
    await asyncio.sleep(HOLD_DOWN_S + 1.0)  # the fault schedule
    await base_archive.set_mode("up")
    assert set(mismatched()) <= set(sources)

    await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    await wait_arrived(d.notices, set(sources), timeout_s=TRANSFER_ALLOWANCE_S)
    assert_archived_exactly_once(d.cluster, d.notices, sources)
    assert base_archive.stats()["corrupted_chunks"] > 0
    assert d.cluster.daemons["archive"].pid is not None


async def test_blackholed_summit_base_is_detected_by_timeouts_and_routed_around(drill: DrillFactory) -> None:
    """A silent summit-base link (no error, no answer) is found by timeouts; every file goes direct within a bound."""
    d = await drill()
    summit_base = d.link("summit", "base")
    await summit_base.set_mode("blackhole")
    loop = asyncio.get_running_loop()
    started = loop.time()
    sources = await expose(d.cluster, 1)

    # Found by the hop's own timeouts, whichever comes first: breaker_failures unanswered publishes
    # (publish_timeout_s each) open the breaker, or paho gives up after two silent keepalive periods
    # (checked on a 1 s tick). The custody deadline (end_to_end_timeout_s) must not be needed.
    detection_s = max(TUNING["breaker_failures"] * TUNING["publish_timeout_s"], 2 * KEEPALIVE_S + 1.0)
    bound = detection_s + TRANSFER_ALLOWANCE_S
    assert bound < E2E_S + TRANSFER_ALLOWANCE_S
    await wait_arrived(d.notices, set(sources), timeout_s=bound)
    elapsed = loop.time() - started
    taken = routes_taken(d.notices, set(sources))
    assert set(taken.values()) == {"direct"}, taken
    assert decided_direct(d.events), f"no failover decision on events/summit: {d.events.of_type('event')}"
    assert_archived_exactly_once(d.cluster, d.notices, sources)
    assert elapsed < bound

    await summit_base.set_mode("up")
    await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert_archived_exactly_once(d.cluster, d.notices, sources)


async def test_silent_base_archive_hop_is_caught_and_the_files_re_sent_direct(drill: DrillFactory) -> None:
    """A silent base-archive hop, which the summit cannot see, is caught (the base reports the archive
    unreachable once its keepalive fails, or else the custody deadline fires) and the files go direct."""
    d = await drill()
    base_archive = d.link("base", "archive")
    await base_archive.set_mode("blackhole")
    sources = await expose(d.cluster, 1, detectors=DETECTORS_3)

    # The summit's own hop (to the base) stays healthy: only the base's report or the deadline reveals
    # the silence. Depending on timing the files are re-sent (failover, custody_overdue) or, when the
    # report came first, sent direct from the start (route_changed).
    await wait_arrived(d.notices, set(sources), timeout_s=E2E_S + 2.0 + TRANSFER_ALLOWANCE_S)
    assert decided_direct(d.events) or events_of(d.events, "custody_overdue")
    taken = routes_taken(d.notices, set(sources))
    assert set(taken.values()) == {"direct"}, taken
    assert_archived_exactly_once(d.cluster, d.notices, sources)

    await base_archive.set_mode("up")
    statuses = await wait_settled(d.cluster, archived=len(sources), wake=d.notices, timeout_s=RECOVERY_S)
    assert statuses["base"]["pending"] == 0
    assert_archived_exactly_once(d.cluster, d.notices, sources)


async def test_operator_forces_auto_and_disables_routes_from_the_cli(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """`skyrelay routes force direct`, `auto` and `disable primary` steer the next exposure and emit route_policy."""
    cluster = await make_cluster(tuning=TUNING)
    notices = await subscribe(cluster, "archive", ARRIVALS)
    events = await subscribe(cluster, "summit", SUMMIT_EVENTS)
    await summit_linked(cluster, subscribe)
    sources: dict[str, str] = {}

    async def command_then_exposure(seqnum: int, *command: str, expect: str) -> None:
        policies = len(events_of(events, "route_policy"))
        await cli_ok("routes", *command, "--workdir", str(cluster.workdir), timeout_s=30)
        await events.wait_for(lambda _: len(events_of(events, "route_policy")) > policies, timeout_s=10)
        event = events_of(events, "route_policy")[-1]
        assert event["details"]["command"] == command[0], event
        assert event["details"]["route"] == (command[1] if len(command) > 1 else None), event
        exposure = await expose(cluster, seqnum, detectors=DETECTORS_3)
        sources.update(exposure)
        await wait_arrived(notices, set(exposure), timeout_s=30)
        assert set(routes_taken(notices, set(exposure)).values()) == {expect}, command

    await command_then_exposure(1, "force", "direct", expect="direct")
    await command_then_exposure(2, "auto", expect="primary")
    await command_then_exposure(3, "disable", "primary", expect="direct")

    await wait_settled(cluster, archived=len(sources), wake=notices, timeout_s=30)
    assert_archived_exactly_once(cluster, notices, sources)


async def test_cut_base_archive_strands_nothing_at_the_base(drill: DrillFactory) -> None:
    """Cutting base-archive (a hop the summit cannot see) is reported by the base at once: files it holds
    are re-sent direct and new files go direct, long before the custody deadline; each is archived once."""
    d = await drill(end_to_end_timeout_s=120.0)  # the deadline cannot explain anything in this test
    base_archive = d.link("base", "archive")
    await base_archive.set_mode("slow", mbps=4.0)  # files pile up at the base
    sources = await expose(d.cluster, 1, size_bytes=512 * 1024)
    await d.notices.wait_for(1, timeout_s=30)
    await base_archive.set_mode("cut")
    later = await expose(d.cluster, 2, detectors=DETECTORS_3)
    everything = {**sources, **later}
    await wait_arrived(d.notices, set(everything), timeout_s=30)
    stranded = [e for e in events_of(d.events, "failover") if "unreachable" in e["details"].get("reason", "")]
    assert stranded, "the summit never heard that the base cannot reach the archive"
    assert set(routes_taken(d.notices, set(later)).values()) == {"direct"}
    assert_archived_exactly_once(d.cluster, d.notices, everything)

    await base_archive.set_mode("up")
    statuses = await wait_settled(d.cluster, archived=len(everything), wake=d.notices, timeout_s=RECOVERY_S)
    assert statuses["base"]["pending"] == 0
    assert_archived_exactly_once(d.cluster, d.notices, everything)
