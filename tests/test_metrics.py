"""Prometheus metrics of real daemons: the operator's families exist and move, and the shipped dashboard and
alert rules name only metrics the daemons export."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest
from conftest import SITES, MakeCluster, converged, operator_headers, wait_settled, write_files
from prometheus_client.parser import text_string_to_metric_families

from ops.cluster import Cluster

pytestmark = pytest.mark.timeout(120)

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
METRIC_NAME = re.compile(r"\b((?:skyrelay|process|python)_[a-z0-9_]+)\b")

Samples = dict[str, list[tuple[dict[str, str], float]]]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def _scrape(cluster: Cluster, site: str) -> Samples:
    request = urllib.request.Request(f"{cluster.http_url(site)}/metrics", headers=operator_headers(cluster))
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        # A family with no sample yet (nothing pending, nothing deleted) is still exported by name.
        for suffix in SUFFIXES.get(family.type, ("",)):
            samples.setdefault(family.name + suffix, [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for have, v in samples.get(name, []) if all(have.get(k) == want for k, want in labels.items())]
    assert found, f"no {name}{labels} among {sorted(samples)}"
    return sum(found)


async def test_the_operators_metric_families_exist_and_move_with_a_transfer(make_cluster: MakeCluster) -> None:
    """After one exposure is archived, bytes moved (by direction and peer) count its bytes at every hop, the
    summit shows the one route in use, its breakers closed and nothing held, the archive its catalog (and failed
    jobs at 0), and every site its build info and process metrics."""
    cluster = await make_cluster()
    await converged(cluster)  # (else the exposure may go direct, before the base's link is up: nothing relayed)
    paths = await write_files(cluster, seqnum=1, size_bytes=64 * 1024)
    total = sum(p.stat().st_size for p in paths)
    await wait_settled(cluster, archived=len(paths))
    scraped = {site: await asyncio.to_thread(_scrape, cluster, site) for site in SITES}
    summit, base, archive = scraped["summit"], scraped["base"], scraped["archive"]

    assert _value(archive, "skyrelay_bytes_total", site="archive", direction="in") == total
    assert _value(summit, "skyrelay_bytes_total", site="summit", direction="out") >= total
    relayed = _value(base, "skyrelay_bytes_total", site="base", direction="in", peer="summit")
    assert relayed <= _value(base, "skyrelay_bytes_total", site="base", direction="out", peer="archive")

    in_use = [labels for labels, value in summit["skyrelay_route_in_use"] if value == 1.0]
    assert len(in_use) == 1 and len(summit["skyrelay_route_in_use"]) == 2
    assert (in_use[0]["route"], in_use[0]["preferred"]) == ("primary", "true")
    assert _value(summit, "skyrelay_breaker_state", peer="base", state="closed") == 1.0
    assert _value(summit, "skyrelay_breaker_state", peer="archive", state="open") == 0.0
    assert _value(summit, "skyrelay_held_files", site="summit") == 0.0
    assert _value(summit, "skyrelay_oldest_held_age_seconds", site="summit") == 0.0
    assert _value(archive, "skyrelay_catalog_files", status="archived") == len(paths)
    assert _value(archive, "skyrelay_catalog_files", status="quarantined") == 0.0
    # At 0 before the first failed job, so that the alert rule's increase() sees the first one.
    assert _value(archive, "skyrelay_problems_total", site="archive", kind="job_failed") == 0.0

    for site, samples in scraped.items():
        build = samples["skyrelay_build_info"]
        assert [labels["site"] for labels, _ in build] == [site]
        assert build[0][0]["version"] and build[0][0]["python"].startswith("3.")
        assert _value(samples, "process_resident_memory_bytes") > 1e6
        assert _value(samples, "process_cpu_seconds_total") > 0
        assert "python_info" in samples

    exported = set().union(*scraped.values())
    dashboard = json.loads((SYSTEMD / "skyrelay-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = (SYSTEMD / "skyrelay-alerts.yml").read_text()
    named = {m for text in [*expressions, rules] for m in METRIC_NAME.findall(text)}
    assert len(named) > 15
    assert sorted(named - exported) == []
