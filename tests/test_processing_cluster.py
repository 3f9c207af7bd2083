"""Calibration products on arrival, on a real cluster: a day of biases, darks and flats becomes three masters.

Real FITS from the calibration simulator (small detectors) are dropped into the summit inbox of a
real cluster; the archive's journal, its files and ``skyrelay subscribe --since 0`` are the truth.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import DAYOBS, INSTRUMENT, MakeCluster, blake3_of, cli_ok, query_journal

from ops.cluster import Cluster
from ops.simulate.calibs import DetectorSpec, write_calib_day

pytestmark = pytest.mark.timeout(180)

DETECTOR = "R22_S11"
PRODUCTS = "skyrelay/v1/products/#"


async def drop_day(cluster: Cluster, **counts: Any) -> None:
    """Write a day of calibrations of one small detector into the summit inbox (off the loop)."""
    await asyncio.to_thread(
        write_calib_day,
        cluster.inbox,
        instrument=INSTRUMENT,
        detector=DETECTOR,
        dayobs=DAYOBS,
        spec=DetectorSpec.small(),
        **counts,
    )


async def product_notices(cluster: Cluster, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The first ``count`` product notices of the archive's log, replayed with ``subscribe --since 0``."""
    out = await cli_ok(
        "subscribe",
        "--workdir",
        str(cluster.workdir),
        "--since",
        "0",
        "--topic",
        PRODUCTS,
        "--count",
        str(count),
        timeout_s=timeout_s,
    )
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_a_day_of_calibrations_yields_one_master_of_each_kind(make_cluster: MakeCluster) -> None:
    """Bias 5 / dark 5 / flat 5 give exactly one master bias, dark and flat, each announced once and replayable,
    their files present with the announced checksums, the dark naming the bias and the flat both."""
    cluster = await make_cluster()
    await drop_day(cluster, bias=5, dark=5, flat=5)

    lines = await product_notices(cluster, 3)
    products = query_journal(cluster, "archive", "SELECT * FROM products ORDER BY created_at")
    notices = query_journal(cluster, "archive", "SELECT * FROM notices WHERE topic LIKE 'skyrelay/v1/products/%'")
    jobs = query_journal(cluster, "archive", "SELECT step, state, attempts FROM jobs ORDER BY rowid")

    messages = {line["message"]["kind"]: line["message"] for line in lines}
    assert sorted(messages) == ["bias", "dark", "flat"]
    assert all(line["topic"] == f"skyrelay/v1/products/{INSTRUMENT}" for line in lines)
    assert [line["position"] for line in lines] == [line["message"]["position"] for line in lines]
    assert len(products) == 3 and len(notices) == 3
    assert [(j["step"], j["state"], j["attempts"]) for j in jobs] == [
        ("master_bias", "done", 1),
        ("master_dark", "done", 1),
        ("master_flat", "done", 1),
    ]
    for product in products:
        message = messages[product["kind"]]
        path = cluster.archive_root / product["archive_path"]
        assert path.is_file()
        assert message["archive_path"] == product["archive_path"]
        assert product["archive_path"].startswith(f"products/{product['kind']}/{INSTRUMENT}/{DETECTOR}/")
        assert blake3_of(path) == product["checksum"] == message["checksum"]
        assert len(message["inputs"]) == 5 and message["left_out"] == []
        assert message["stats"]["frames_used"] == 5
        assert len(message["stats"]["amps"]) == 8
    bias_id = messages["bias"]["product_id"]
    dark_id = messages["dark"]["product_id"]
    amps = messages["bias"]["stats"]["amps"]
    assert all(a["read_noise_adu"] is not None and a["read_noise_adu"] > 0 for a in amps.values())
    assert all(a["dark_current_adu_per_s"] is not None for a in messages["dark"]["stats"]["amps"].values())
    provenance = {p["kind"]: json.loads(p["provenance"]) for p in products}
    assert provenance["dark"]["bias"]["product_id"] == bias_id
    assert provenance["flat"]["bias"]["product_id"] == bias_id
    assert provenance["flat"]["dark"]["product_id"] == dark_id
    assert {i["checksum"] for i in provenance["dark"]["inputs"]} == {i["checksum"] for i in messages["dark"]["inputs"]}


async def test_a_lamp_drop_leaves_the_changed_frames_out_and_names_them(make_cluster: MakeCluster) -> None:
    """A flat sequence of 7 whose lamp drops to 70 % at frame 5: the master comes from frames 1-4 (the larger
    group), frames 5-7 are left out, and a problem names them."""
    cluster = await make_cluster()
    await drop_day(cluster, bias=5, flat=7, lamp_change_at=5, lamp_factor=0.7)

    lines = await product_notices(cluster, 2)
    flat = next(line["message"] for line in lines if line["message"]["kind"] == "flat")
    problems = query_journal(cluster, "archive", "SELECT payload FROM reports WHERE kind = 'frames_left_out'")

    left_out = sorted(item["name"] for item in flat["left_out"])
    names = sorted(item["name"] for item in flat["inputs"])
    assert len(names) == 7
    assert left_out == names[4:]
    assert flat["stats"]["frames_used"] == 4
    assert len(problems) == 1
    problem = json.loads(problems[0]["payload"])
    assert sorted(problem["details"]["frames"]) == left_out
    assert all(name in problem["reason"] for name in left_out)




async def test_operators_list_show_and_reprocess_a_product(make_cluster: MakeCluster) -> None:
    """``products list``/``show`` describe the masters with their inputs and parameters; ``products reprocess``
    rebuilds the flat (bias- and dark-corrected) byte-identically and exits 0."""
    cluster = await make_cluster()
    await drop_day(cluster, bias=3, dark=3, flat=3)
    lines = await product_notices(cluster, 3)
    flat = next(line["message"] for line in lines if line["message"]["kind"] == "flat")
    workdir = ("--workdir", str(cluster.workdir))

    listed = json.loads(await cli_ok("products", "list", "--kind", "flat", "--json", *workdir))
    shown = json.loads(await cli_ok("products", "show", flat["product_id"], "--json", *workdir))
    text = await cli_ok("products", "show", flat["product_id"], *workdir)
    rebuilt = await cli_ok("products", "reprocess", flat["product_id"], *workdir)

    assert [row["product_id"] for row in listed] == [flat["product_id"]]
    assert shown["checksum"] == flat["checksum"]
    assert [i["checksum"] for i in shown["provenance"]["inputs"]] == [i["checksum"] for i in flat["inputs"]]
    assert shown["provenance"]["params"]["min_frames"] == 3
    assert all(item["name"] in text and item["checksum"] in text for item in flat["inputs"])
    assert "SAME" in rebuilt and flat["checksum"] in rebuilt


async def test_a_master_interrupted_by_an_archive_crash_is_built_exactly_once(make_cluster: MakeCluster) -> None:
    """SIGKILL of the archive while its master bias runs: after the restart the job runs again and the product
    exists once (one row, one notice, one file)."""
    cluster = await make_cluster()
    larger = DetectorSpec(amps_x=8, amps_y=2, amp_width_px=128, amp_height_px=512, overscan_px=16)
    await asyncio.to_thread(
        write_calib_day, cluster.inbox, instrument=INSTRUMENT, detector=DETECTOR, dayobs=DAYOBS, bias=5, spec=larger
    )
    # Another process's journal announces nothing: a bounded re-read until the job is journaled as running.
    running: list[dict[str, Any]] = []
    async with asyncio.timeout(90):
        while not running:
            await asyncio.sleep(0.02)
            running = query_journal(cluster, "archive", "SELECT job_key FROM jobs WHERE state = 'running'")
    await cluster.daemons["archive"].kill()
    at_kill = query_journal(cluster, "archive", "SELECT COUNT(*) AS n FROM products")[0]["n"]
    await cluster.restart_daemon("archive")

    lines = await product_notices(cluster, 1)
    products = query_journal(cluster, "archive", "SELECT * FROM products")
    notices = query_journal(cluster, "archive", "SELECT * FROM notices WHERE topic LIKE 'skyrelay/v1/products/%'")
    jobs = query_journal(cluster, "archive", "SELECT state, attempts FROM jobs")
    files = list((cluster.archive_root / "products").rglob("*.fits"))

    assert at_kill == 0
    assert len(products) == 1 and len(notices) == 1 and len(files) == 1
    assert jobs == [{"state": "done", "attempts": 2}]
    assert lines[0]["message"]["product_id"] == products[0]["product_id"]
    assert blake3_of(files[0]) == products[0]["checksum"]


async def test_an_interrupted_flat_sequence_is_built_after_the_quiet_time(make_cluster: MakeCluster) -> None:
    """Bias, two darks (too few for a master) and a flat sequence cut after frame 4 of 6: after ``quiet_s`` the
    flat is built from the frames that came, without dark correction (its provenance says so), and the
    shortfall is a problem."""
    cluster = await make_cluster(processing={"quiet_s": 3.0})
    await drop_day(cluster, bias=5, dark=2, flat=6, interrupt_at=5)

    lines = await product_notices(cluster, 2)
    flat = next(line["message"] for line in lines if line["message"]["kind"] == "flat")
    assert flat["stats"]["frames_used"] == 4
    assert len(flat["inputs"]) == 4
    provenance = await cli_ok("products", "show", flat["product_id"], "--workdir", str(cluster.workdir), "--json")
    assert "without dark" in provenance
    problems = query_journal(cluster, "archive", "SELECT payload FROM reports WHERE kind = 'sequence_incomplete'")
    assert problems, "the interrupted sequence was not reported"
