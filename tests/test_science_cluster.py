"""Difference imaging on arrival, on a real cluster: a calibration day, then a field's quad, gives diffs and alerts.

Real raws from the calibration and night simulators (small 256 px detectors) are dropped into the
summit inbox of a real cluster; the archive's journal, its files and ``skyrelay subscribe --since 0``
are the truth.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from conftest import DAYOBS, INSTRUMENT, MakeCluster, blake3_of, cli_ok, query_journal, run_cli

from ops.cluster import Cluster
from ops.output import Exit
from ops.simulate.calibs import write_calib_day
from ops.simulate.night import SCIENCE_SMALL, WrittenVisit, write_night
from processors.alerts import read_alerts_avro
from processors.headers.verify import verify_header

pytestmark = pytest.mark.timeout(240)

DETECTOR = "R22_S11"


async def calibrated(make_cluster: MakeCluster, *, via_cli: bool = False, **processing: Any) -> Cluster:
    """A cluster whose archive holds a master bias and flat of the small science detector (written by
    ``skyrelay simulate calibs --small`` with ``via_cli``)."""
    cluster = await make_cluster(processing={"quiet_s": 30, **processing})
    if via_cli:
        await cli_ok(
            "simulate", "calibs", "--workdir", str(cluster.workdir), "--bias", "5", "--flat", "5", "--small",
            "--instrument", INSTRUMENT, "--detector", DETECTOR, "--dayobs", DAYOBS,
        )  # fmt: skip
    else:
        await asyncio.to_thread(
            write_calib_day, cluster.inbox, instrument=INSTRUMENT, detector=DETECTOR, dayobs=DAYOBS,
            spec=SCIENCE_SMALL, bias=5, flat=5,
        )  # fmt: skip
    await notices(cluster, "skyrelay/v1/products/#", 2)
    return cluster


async def night(cluster: Cluster, **options: Any) -> list[WrittenVisit]:
    """One field's quad into the summit inbox (off the loop); ``dayobs`` is DAYOBS unless given."""
    options.setdefault("dayobs", DAYOBS)
    return await asyncio.to_thread(
        write_night, cluster.inbox, instrument=INSTRUMENT, detector=DETECTOR, fields=1, small=True, **options
    )


async def notices(cluster: Cluster, topic: str, count: int, timeout_s: float = 150.0) -> list[dict[str, Any]]:
    """The first ``count`` notices of ``topic`` in the archive's log, replayed with ``subscribe --since 0``."""
    out = await cli_ok(
        "subscribe", "--workdir", str(cluster.workdir), "--since", "0", "--topic", topic, "--count", str(count),
        timeout_s=timeout_s,
    )  # fmt: skip
    return [json.loads(line)["message"] for line in out.splitlines() if line.strip()]


def diff_pairs(cluster: Cluster) -> list[str]:
    """The diff jobs journaled: ``<science>-<reference>`` CURINDEX pairs, sorted."""
    rows = query_journal(cluster, "archive", "SELECT sequence FROM jobs WHERE step = 'diff'")
    return sorted(r["sequence"].rsplit("/", 1)[1] for r in rows)


def test_the_night_writer_gives_verified_object_raws_with_truth(tmp_path: Path) -> None:
    """Each science raw has a clean header (verify_header), IMGTYPE OBJECT, its quad's GROUPID and CURINDEX,
    MAXINDEX 4 and a TAN WCS; a lost visit has a truth file saying so and no raw."""
    visits = write_night(tmp_path, instrument=INSTRUMENT, detector=DETECTOR, dayobs=DAYOBS, fields=1, small=True,
                         lose=["v3"])  # fmt: skip
    assert [v.curindex for v in visits] == [1, 2, 4]
    for visit in visits:
        header = fits.getheader(visit.path)
        assert verify_header(header) == []
        assert header["IMGTYPE"] == "OBJECT" and header["OBJECT"] == "F01"
        assert header["GROUPID"] == visit.group_id and header["CURINDEX"] == visit.curindex
        assert header["MAXINDEX"] == 4 and header["CTYPE1"] == "RA---TAN"
        assert header["FILTER"].startswith("r")
    truths = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.truth.json")}
    assert len(truths) == 4
    assert sum(1 for t in truths.values() if t["lost"]) == 1


async def test_a_quad_gives_calexps_two_diffs_and_an_alert_at_the_transient(make_cluster: MakeCluster) -> None:
    """After a bias+flat day, a quad with a transient (SNR 20 in visits 2 and 4) gives four calexps naming the
    masters, diffs 2-1 and 4-3 naming their calexps, and in each an alert within 1.5 px of the truth, published
    once by id; ``alerts show`` writes its three cutouts as PNG."""
    cluster = await calibrated(make_cluster, chunk_end_s=3600)
    masters = {r["kind"]: r["product_id"] for r in query_journal(cluster, "archive", "SELECT * FROM products")}
    visits = await night(cluster)
    by_index = {v.curindex: v for v in visits}

    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 4 + 4)
    diffs = [m for m in products if m["kind"] == "diff"]
    calexps = {m["visits"][0]: m for m in products if m["kind"] == "calexp"}
    assert diff_pairs(cluster) == ["2-1", "4-3"]
    assert len(calexps) == 4
    for message in calexps.values():
        ids = {i.get("product_id") for i in message["inputs"]}
        assert {masters["bias"], masters["flat"]} <= ids
        assert message["stats"]["ok"] is True
    for diff in diffs:
        science, reference = diff["visits"]
        assert [i["name"] for i in diff["inputs"]] == [science, reference]
        assert [i["product_id"] for i in diff["inputs"]] == [calexps[science]["product_id"],
                                                             calexps[reference]["product_id"]]  # fmt: skip
        assert blake3_of(cluster.archive_root / diff["archive_path"]) == diff["checksum"]
    count = sum(d["stats"]["alerts"] for d in diffs)
    alerts = await notices(cluster, "skyrelay/v1/alerts/#", count)
    assert len({a["alert_id"] for a in alerts}) == len(alerts) == count
    for science_index, reference_index in ((2, 1), (4, 3)):
        truth = by_index[science_index]
        mine = [a for a in alerts if a["visits"] == [truth.obsid, by_index[reference_index].obsid]]
        distance = min(
            math.hypot(a["alert"]["diaSource"]["x"] - truth.transient_x_px,
                       a["alert"]["diaSource"]["y"] - truth.transient_y_px) for a in mine
        )  # fmt: skip
        assert distance < 1.5
    out = await cli_ok("alerts", "show", str(alerts[0]["alert_id"]), "--workdir", str(cluster.workdir), "--out",
                       str(cluster.workdir / "pngs"), "--json")  # fmt: skip
    shown = json.loads(out)
    assert shown["alert"]["alertId"] == alerts[0]["alert_id"]
    heads = [await asyncio.to_thread(Path(path).read_bytes) for path in shown["pngs"]]
    assert len(heads) == 3 and all(head[:8] == b"\x89PNG\r\n\x1a\n" for head in heads)
    text = await cli_ok("alerts", "show", str(alerts[0]["alert_id"]), "--workdir", str(cluster.workdir), "--out",
                        str(cluster.workdir / "pngs"))  # fmt: skip
    assert text.splitlines()[0] == f"alert {alerts[0]['alert_id']}" and "{" not in text, text
    assert all(path in text for path in shown["pngs"]), text


async def test_a_lost_third_visit_pairs_2_1_and_then_4_2_at_the_chunk_end(make_cluster: MakeCluster) -> None:
    """``simulate calibs --small`` then ``simulate night --lose v3 --small`` (one detector spec): 2-1 is made on
    arrival and, only once the chunk has ended (chunk_end_s = 4 s after the last visit), the lost-visit mapping's
    4-2; nothing else."""
    cluster = await calibrated(make_cluster, via_cli=True, chunk_end_s=4)
    await cli_ok(
        "simulate", "night", "--workdir", str(cluster.workdir), "--fields", "1", "--lose", "v3", "--small",
        "--instrument", INSTRUMENT, "--detector", DETECTOR, "--dayobs", DAYOBS,
    )  # fmt: skip
    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 3 + 4)
    diffs = {m["stats"]["reason"]: m for m in products if m["kind"] == "diff"}
    last_arrival = query_journal(
        cluster, "archive", "SELECT max(arrived_at) AS t FROM catalog WHERE upper(imgtype) = 'OBJECT'"
    )[0]["t"]
    assert diff_pairs(cluster) == ["2-1", "4-2"]
    assert sorted(diffs) == ["lost_v3", "regular"]
    assert diffs["lost_v3"]["created_at"] >= last_arrival + 4.0


async def test_two_lost_visits_leave_one_desperate_pair_at_the_chunk_end(make_cluster: MakeCluster) -> None:
    """v2 and v3 lost: no regular or mapped pair is possible, so at the chunk end 4-1 is made as desperate."""
    cluster = await calibrated(make_cluster, chunk_end_s=3)
    await night(cluster, lose=["v2", "v3"])
    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 2 + 2)
    assert diff_pairs(cluster) == ["4-1"]
    assert [m["stats"]["reason"] for m in products if m["kind"] == "diff"] == ["desperate"]


async def test_an_archive_killed_during_a_difference_publishes_its_alerts_once_by_id(make_cluster: MakeCluster) -> None:
    """SIGKILL of the archive while a diff job runs: after the restart the job runs again, each alert id is in
    the notice log once (replayed by ``subscribe --since 0``), they are the ids of the visit's Avro product, and
    the log's positions run 1..N with none skipped."""
    cluster = await calibrated(make_cluster, chunk_end_s=3600)
    await night(cluster)
    # Another process's journal announces nothing: a bounded re-read until a diff job is journaled as running.
    running: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while not running:
            await asyncio.sleep(0.01)
            running = query_journal(
                cluster, "archive", "SELECT job_key FROM jobs WHERE step = 'diff' AND state = 'running'"
            )
    await cluster.daemons["archive"].kill()
    at_kill = query_journal(cluster, "archive", "SELECT COUNT(*) AS n FROM products WHERE kind = 'diff'")[0]["n"]
    await cluster.restart_daemon("archive")

    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 4 + 4)
    diffs = [m for m in products if m["kind"] == "diff"]
    count = sum(d["stats"]["alerts"] for d in diffs)
    alerts = await notices(cluster, "skyrelay/v1/alerts/#", count)
    rows = query_journal(cluster, "archive", "SELECT rowid, notice_id FROM notices ORDER BY rowid")
    jobs = query_journal(
        cluster, "archive", "SELECT state, attempts FROM jobs WHERE job_key = ?", (running[0]["job_key"],)
    )
    avro_ids = []
    for product in query_journal(cluster, "archive", "SELECT archive_path FROM products WHERE kind = 'alerts'"):
        data = await asyncio.to_thread((cluster.archive_root / product["archive_path"]).read_bytes)
        avro_ids += [a.alert_id for a in read_alerts_avro(data)]

    assert at_kill == 0
    assert jobs == [{"state": "done", "attempts": 2}]
    assert len(diffs) == 2 and count > 0
    ids = [a["alert_id"] for a in alerts]
    assert len(set(ids)) == len(ids) == count
    assert sorted(ids) == sorted(avro_ids)
    assert sum(1 for r in rows if r["notice_id"].startswith("alert-")) == count
    assert [r["rowid"] for r in rows] == list(range(1, len(rows) + 1))


async def test_a_visit_in_bad_seeing_is_reported_and_paired_around(make_cluster: MakeCluster) -> None:
    """v2 in 2.4 arcsec seeing with max_fwhm_arcsec 2.0: its calexp is catalogued with the failed verdict (the
    others pass, their FWHM within 0.65-1.05 arcsec of a 0.72-0.88 truth), a
    problem names it, and the quad is differenced 3-1 (the lost-visit mapping for v2) and 4-3, never with v2."""
    cluster = await calibrated(make_cluster, chunk_end_s=3600, max_fwhm_arcsec=2.0)
    visits = await night(cluster, bad_seeing=["v2"])
    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 4 + 4)
    calexps = {m["visits"][0]: m for m in products if m["kind"] == "calexp"}
    reasons = sorted(m["stats"]["reason"] for m in products if m["kind"] == "diff")
    problems = query_journal(cluster, "archive", "SELECT payload FROM reports WHERE kind = 'visit_bad_quality'")

    bad = calexps[visits[1].obsid]["stats"]
    # At 2.4 arcsec no star of the small crowded field is isolated enough to model: the verdict still says fwhm.
    assert bad["ok"] is False and "fwhm" in bad["reasons"]
    assert bad["fwhm_arcsec"] is None or bad["fwhm_arcsec"] > 2.0
    good = [calexps[v.obsid]["stats"] for v in visits if v.curindex != 2]
    assert all(g["ok"] and 0.65 < g["fwhm_arcsec"] < 1.05 for g in good)  # truth 0.72-0.88 arcsec
    assert diff_pairs(cluster) == ["3-1", "4-3"]
    assert reasons == ["lost_v2", "regular"]
    assert len(problems) == 1 and visits[1].obsid in problems[0]["payload"]


async def running_job(cluster: Cluster, step: str) -> str:
    """The key of a job of ``step`` once the archive's journal shows it running."""
    # Another process's journal announces nothing: a bounded re-read until such a job is journaled as running.
    running: list[dict[str, Any]] = []
    async with asyncio.timeout(150):
        while not running:
            await asyncio.sleep(0.01)
            running = query_journal(
                cluster, "archive", "SELECT job_key FROM jobs WHERE step = ? AND state = 'running'", (step,)
            )
    return str(running[0]["job_key"])


@pytest.mark.timeout(480)
async def test_a_template_of_one_night_differences_the_next_once_each_across_a_kill(make_cluster: MakeCluster) -> None:
    """``template build`` is refused (exit 4, the archive's reason) before any visit; after a quiet night it stacks
    the four calexps, best seeing first, into a template naming them (``products show`` too; ``products reprocess``
    rebuilds it byte for byte), and refuses to with fewer than ``--min-visits 5``; asking again with the same
    visits builds nothing new; the next night's four visits are each also differenced against it, once — even
    with the archive SIGKILLed during such a difference — and the transient (visits 2 and 4 only) gives an
    alert within 1.5 px whose referenceObsid is the template."""
    cluster = await calibrated(make_cluster, chunk_end_s=3600)
    workdir = str(cluster.workdir)
    refused = await run_cli("template", "build", "--workdir", workdir, "--field", "F01", "--band", "r")
    assert refused.code == Exit.REFUSED and "(422)" in refused.err and "no calexp of field 'F01'" in refused.err

    first = await night(cluster, transient_snr=0.0)
    await notices(cluster, "skyrelay/v1/products/#", 2 + 8)
    built = json.loads(
        await cli_ok(
            "template", "build", "--workdir", workdir, "--field", "F01", "--band", "r", "--json", timeout_s=300
        )
    )["templates"]
    assert [t["state"] for t in built] == ["built"]
    template = built[0]["product"]
    prov = template["provenance"]
    assert template["kind"] == "template" and template["detector"] == DETECTOR
    assert sorted(i["name"] for i in prov["inputs"]) == sorted(v.obsid for v in first)
    fwhms = [i["fwhm_arcsec"] for i in prov["inputs"]]
    assert fwhms == sorted(fwhms) and 0.6 < prov["seeing"]["fwhm_arcsec"] < 1.1
    assert blake3_of(cluster.archive_root / template["archive_path"]) == template["checksum"]

    shown = await cli_ok("products", "show", template["product_id"], "--workdir", workdir)
    assert template["product_id"] in shown and all(v.obsid in shown for v in first)
    rebuilt = json.loads(await cli_ok("products", "reprocess", template["product_id"], "--workdir", workdir, "--json"))
    assert rebuilt["same"] and rebuilt["checksum"] == template["checksum"]
    too_few = await run_cli(
        "template", "build", "--workdir", workdir, "--field", "F01", "--band", "r", "--min-visits", "5"
    )
    assert too_few.code == Exit.REFUSED and "4 usable visit(s) of 4" in too_few.err and "at least 5" in too_few.err

    again = json.loads(
        await cli_ok(
            "template", "build", "--workdir", workdir, "--field", "F01", "--band", "r", "--json", timeout_s=120
        )
    )["templates"]
    assert [(t["state"], t["product"]["product_id"]) for t in again] == [("existing", template["product_id"])]

    second = await night(cluster, dayobs="20250602", seed=1)
    killed = await running_job(cluster, "diff_template")
    await cluster.daemons["archive"].kill()
    await cluster.restart_daemon("archive")

    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 8 + 1 + 16)
    tdiffs = [m for m in products if m["kind"] == "diff" and m["stats"]["reason"] == "template"]
    assert sorted(d["visits"][0] for d in tdiffs) == sorted(v.obsid for v in second)
    calexps = {m["visits"][0]: m for m in products if m["kind"] == "calexp"}
    for diff in tdiffs:
        assert diff["visits"][1] == template["product_id"]
        assert [i["product_id"] for i in diff["inputs"]] == [calexps[diff["visits"][0]]["product_id"],
                                                             template["product_id"]]  # fmt: skip
        assert diff["inputs"][1]["checksum"] == template["checksum"]
    jobs = query_journal(cluster, "archive", "SELECT job_key, state, attempts FROM jobs WHERE step = 'diff_template'")
    assert len(jobs) == 4 and all(j["state"] == "done" for j in jobs)
    assert [j["attempts"] for j in jobs if j["job_key"] == killed] == [2]

    count = sum(d["stats"]["alerts"] for d in tdiffs)
    every = sum(m["stats"]["alerts"] for m in products if m["kind"] == "diff")
    alerts = [
        a for a in await notices(cluster, "skyrelay/v1/alerts/#", every) if a["visits"][1] == template["product_id"]
    ]
    assert len(alerts) == count and len({a["alert_id"] for a in alerts}) == count
    logged = query_journal(cluster, "archive", "SELECT COUNT(*) AS n FROM notices WHERE notice_id LIKE 'alert-%'")
    assert logged == [{"n": every}]
    for visit in second:
        mine = [a for a in alerts if a["visits"][0] == visit.obsid]
        assert all(a["alert"]["referenceObsid"] == template["product_id"] for a in mine)
        near = [a for a in mine if math.hypot(a["alert"]["diaSource"]["x"] - visit.transient_x_px,
                                              a["alert"]["diaSource"]["y"] - visit.transient_y_px) < 1.5]  # fmt: skip
        assert len(near) == (1 if visit.curindex in (2, 4) else 0), (visit.curindex, near)
        assert all(not a["alert"]["diaSource"]["isNegative"] for a in near)

    assert query_journal(cluster, "archive", "SELECT COUNT(*) AS n FROM products WHERE kind = 'template'") == [{"n": 1}]


async def test_science_frames_arriving_with_the_calibrations_wait_for_their_flat(make_cluster: MakeCluster) -> None:
    """The day's bias and flats and a quad dropped in together: no calexp is made before the master flat of its
    filter is built (each names the bias and the flat), and each records that it went without a dark (the day
    has no dark sequence)."""
    cluster = await make_cluster(processing={"quiet_s": 30, "chunk_end_s": 3600})
    await asyncio.to_thread(
        write_calib_day, cluster.inbox, instrument=INSTRUMENT, detector=DETECTOR, dayobs=DAYOBS, spec=SCIENCE_SMALL,
        bias=5, flat=5,
    )  # fmt: skip
    await night(cluster)
    products = await notices(cluster, "skyrelay/v1/products/#", 2 + 4 + 4)
    masters = {m["kind"]: m for m in products if m["kind"] in ("bias", "flat")}
    calexps = [m for m in products if m["kind"] == "calexp"]
    assert len(calexps) == 4 and set(masters) == {"bias", "flat"}
    for calexp in calexps:
        assert {masters["bias"]["product_id"], masters["flat"]["product_id"]} <= {
            i.get("product_id") for i in calexp["inputs"]
        }
        assert calexp["created_at"] > masters["flat"]["created_at"]
    rows = query_journal(cluster, "archive", "SELECT provenance FROM products WHERE kind = 'calexp'")
    for row in rows:
        notes = json.loads(row["provenance"])["notes"]
        assert len(notes) == 1 and "no master dark" in notes[0]
