"""``skyrelay bench --quick`` end to end: every workload completes and the report carries its figures.

A smoke test of the benchmark itself (real clusters, rsync and dd); the targets are reported, never
asserted here: timing belongs to benchmarks, not tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from ops.bench import measure_verify_us

pytestmark = pytest.mark.timeout(240)


async def test_quick_bench_reports_every_workload_beside_rsync_and_dd(tmp_path: Path) -> None:
    """Throughput, latency, RSS and CPU per workload, the rsync and dd baselines, and the targets."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync is needed for the baseline (.ci/install installs it)")
    workloads = ["direct", "idle", "small", "backlog", "cpu", "headers"] + (
        ["https"] if shutil.which("openssl") else []
    )
    run = await run_cli(
        "bench", "--quick", "--json", "--workdir", str(tmp_path),
        "--workloads", ",".join(workloads), "--files", "12", "--idle-files", "3",
        "--small-files", "12", "--backlog-files", "20",
        timeout_s=220,
    )  # fmt: skip
    assert run.code == 0, run.err[-3000:]
    report = json.loads(run.out)
    table = run.err

    assert report["errors"] == []
    assert report["baselines"]["rsync"]["mb_per_s"] > 0 and report["baselines"]["rsync"]["fsync"]
    assert report["baselines"]["dd"]["mb_per_s"] > 0
    for name in ("direct", *(["https"] if "https" in workloads else [])):
        entry = report["workloads"][name]
        assert entry["complete"] and entry["received"] == 12, entry
        assert entry["vs_rsync"] > 0 and entry["latency"]["p99_s"] >= entry["latency"]["p50_s"] > 0
        assert entry["duplicate_notices"] == 0
        assert all(0 < rss < 1024 for rss in entry["peak_rss_mib"].values())
    assert report["workloads"]["idle"]["complete"] and report["workloads"]["idle"]["received"] == 3
    assert report["baselines"]["rsync"]["cpu_s_per_gb"] > 0 and report["baselines"]["rsync_small"]["files_per_s"] > 0
    small = report["workloads"]["small"]
    assert small["complete"] and small["received"] == 7 and small["lone"]["received"] == 5, small
    assert small["vs_rsync"] > 0 and small["cpu_s_per_gb_per_hop"] > 0 and small["cpu_vs_rsync"] > 0
    backlog = report["workloads"]["backlog"]
    assert backlog["complete"] and backlog["received"] == 20 and backlog["vs_rsync"] > 0, backlog
    assert backlog["duplicate_notices"] == 0 and set(backlog["journal_bytes_per_file"]) == {"summit", "base", "archive"}
    assert report["workloads"]["direct"]["cpu_s_per_gb_per_hop"] > 0
    cpu = report["workloads"]["cpu"]
    assert set(cpu["percent"]) == set(cpu["tail"]) == {"summit", "base", "archive"}
    assert report["workloads"]["headers"]["verify_us_per_header"] > 0
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {
        "direct",
        "idle",
        "peak",
        "small",
        "backlog",
        "CPU-s/GB",
    }
    assert all(t["pass"] is not None for t in report["targets"]), report["targets"]
    assert "rsync    loopback daemon" in table and "x rsync" in table
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
    assert leftovers == [], "the run directory is removed unless --keep"


def test_measure_verify_us_reports_a_time() -> None:
    """The header micro-benchmark returns a positive number of microseconds per header."""
    assert measure_verify_us(10) > 0


async def test_quick_processing_bench_prints_the_stage_table(tmp_path: Path) -> None:
    """``bench processing --quick`` builds the masters, then times one small detector from raw to published alerts
    per stage (ISR, PSF, matching, detection, cutouts, publish) with a PASS/MISS verdict, and reports detectors
    per minute with the process pool and with Dask; the JSON has the same figures."""
    run = await run_cli("bench", "processing", "--quick", "--json", "--workdir", str(tmp_path), timeout_s=220)
    assert run.code == 0, run.err[-3000:]
    science = json.loads(run.out)["science"]
    latency = science["latency"]
    assert set(latency["stages_s"]) == {"isr", "psf", "matching", "detection", "cutouts", "products", "publish"}
    assert all(seconds > 0 for seconds in latency["stages_s"].values())
    assert latency["total_s"] >= sum(latency["stages_s"].values()) * 0.99
    assert latency["verdict"] in {"PASS", "MISS"} and latency["alerts"] > 0
    assert science["throughput"]["process_pool_per_min"] > 0 and science["throughput"]["dask_per_min"] > 0
    for stage in ("isr", "psf", "matching", "detection", "cutouts", "publish"):
        assert f"\n{stage} " in run.err
    assert "target <= 10 s" in run.err and "process pool" in run.err and "dask" in run.err
