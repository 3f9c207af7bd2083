"""What operators rely on day to day: metrics per site, and relay copies expired after custody."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest
from conftest import MakeCluster, Subscribe, cli_ok, converged, operator_headers, wait_settled

from ops.camera import write_exposure

pytestmark = pytest.mark.timeout(120)


def _get(url: str, headers: dict[str, str]) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return str(resp.read().decode())


async def test_metrics_count_the_exposure_and_the_base_expires_its_copies(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """After an exposure is archived, /metrics shows it, the status page is served, and the base holds no relay copy."""
    cluster = await make_cluster()
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    events = await subscribe(cluster, "base", "skyrelay/v1/events/base")
    await converged(cluster)  # (a file written before the base is up at the summit goes direct)
    await asyncio.to_thread(write_exposure, cluster.inbox, "ComCam", dayobs="20261120", seqnum=1, size_bytes=200_000)
    await wait_settled(cluster, archived=9, wake=arrivals)

    def deleted(messages: list[Any]) -> int:
        return sum(
            len(m.data["details"]["files"]) for m in messages if (m.data or {}).get("kind") == "retention_deleted"
        )

    # The base deletes its relay copies once custody is back (a burst of receipts in one sweep).
    await events.wait_for(lambda ms: deleted(ms) >= 9, timeout_s=30)

    archive = await asyncio.to_thread(
        _get, f"http://127.0.0.1:{cluster.http_ports['archive']}/metrics", operator_headers(cluster)
    )
    assert 'skyrelay_files_total{outcome="stored",site="archive"} 9.0' in archive
    assert 'skyrelay_arrival_latency_seconds_count{route="primary",site="archive"} 9.0' in archive
    summit = await asyncio.to_thread(
        _get, f"http://127.0.0.1:{cluster.http_ports['summit']}/metrics", operator_headers(cluster)
    )
    assert 'skyrelay_route_healthy{route="primary",site="summit"} 1.0' in summit
    assert 'skyrelay_awaiting_custody{site="summit"} 0.0' in summit
    assert 'skyrelay_custody_stuck{site="summit"} 0.0' in summit
    assert 'skyrelay_link_up{peer="base",site="summit"} 1.0' in summit

    page = await asyncio.to_thread(_get, f"http://127.0.0.1:{cluster.http_ports['base']}/", operator_headers(cluster))
    assert "<title>skyrelay console</title>" in page and 'new EventSource("v1/stream")' in page

    relay = cluster.workdir / "base" / "state" / "relay"
    leftovers = await asyncio.to_thread(lambda: [p for p in relay.rglob("*")] if relay.exists() else [])
    assert leftovers == []


async def test_a_storage_failure_at_the_base_is_reported_and_retried_without_losing_the_file(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """When the base cannot write (its relay store is blocked), it reports a storage_error, keeps
    running, and the file is archived once the store is writable again."""
    cluster = await make_cluster(routes={"primary": ["summit", "base", "archive"]})
    relay = cluster.workdir / "base" / "state" / "relay"
    await asyncio.to_thread(relay.write_text, "a file where the relay directory should be\n")
    base_pid = cluster.daemons["base"].pid
    problems = await subscribe(cluster, "base", "skyrelay/v1/problems/base")
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    await asyncio.to_thread(write_exposure, cluster.inbox, "LATISS", dayobs="20261120", seqnum=1, size_bytes=100_000)
    await problems.wait_for(lambda msgs: any(m.data.get("kind") == "storage_error" for m in msgs), timeout_s=30)
    assert cluster.daemons["base"].pid == base_pid
    await asyncio.to_thread(relay.unlink)
    await wait_settled(cluster, archived=1, wake=arrivals, timeout_s=60)
    # (custody can reach the summit before the archive's notice reaches the subscriber: both follow the commit)
    await arrivals.wait_for(lambda _: bool(arrivals.of_type("arrival")), timeout_s=10)
    assert [n["name"] for n in arrivals.of_type("arrival")] == ["AT_O_20261120_000001_R00_S00.fits"]


async def test_operator_commands_reach_a_system_through_its_topology_file(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """On a deployed system (no cluster.json) status, routes and verify work from the topology file alone."""
    cluster = await make_cluster()
    arrivals = await subscribe(cluster, "archive", "skyrelay/v1/arrivals/#")
    await asyncio.to_thread(write_exposure, cluster.inbox, "LATISS", dayobs="20261120", seqnum=1, size_bytes=100_000)
    await wait_settled(cluster, archived=1, wake=arrivals)
    topology = str(cluster.topology_path)

    status = json.loads(await cli_ok("status", "--topology", topology, "--json"))
    assert set(status) == {"summit", "base", "archive"}
    assert status["archive"]["catalog"] == {"archived": 1}
    routes = json.loads(await cli_ok("routes", "--topology", topology, "--json"))
    assert [r["name"] for r in routes] == ["primary", "direct"]
    report = json.loads(await cli_ok("verify", "--topology", topology, "--dayobs", "20261120", "--json"))
    assert report["ok"] and report["complete"] == 1
