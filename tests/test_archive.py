"""The archive side: header repair with proof, quarantine and release, completeness, and ``skyrelay verify``.

Every test runs a real cluster (three mosquittos, three daemons), writes real FITS files into the summit
inbox, and asserts what an operator or a subscriber sees: catalog rows in the archive's journal, archived
FITS headers, MQTT notices and problems, and the exit codes of the ``skyrelay`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from conftest import (
    DAYOBS,
    Collector,
    MakeCluster,
    Subscribe,
    blake3_of,
    checksums,
    drop_into_inbox,
    query_journal,
    read_catalog,
    run_cli,
    wait_settled,
)

from ops.camera import REMOVE, build_primary_header, write_exposure
from ops.cluster import Cluster
from processors.detectors import expected_detectors

pytestmark = pytest.mark.timeout(120)

SIZE_BYTES = 200_000
ARRIVALS = "skyrelay/v1/arrivals/#"
ARCHIVE_PROBLEMS = "skyrelay/v1/problems/archive"
SUMMIT_PROBLEMS = "skyrelay/v1/problems/summit"
COMCAM_DETECTORS = sorted(expected_detectors("ComCam"))
LATISS_DETECTOR = "R00_S00"


# ---- helpers ------------------------------------------------------------------------------


def latiss_obsid(seqnum: int) -> str:
    """The OBSID the camera gives a LATISS exposure of :data:`DAYOBS`."""
    return f"AT_O_{DAYOBS}_{seqnum:06d}"


def comcam_obsid(seqnum: int) -> str:
    """The OBSID the camera gives a ComCam exposure of :data:`DAYOBS`."""
    return f"CC_O_{DAYOBS}_{seqnum:06d}"


async def camera(
    inbox: Path,
    instrument: str,
    *,
    seqnum: int,
    detectors: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    imgtype: str = "OBJECT",
) -> list[Path]:
    """Write one exposure of ``instrument`` into ``inbox`` as the camera does, off the event loop."""
    return await asyncio.to_thread(
        write_exposure,
        inbox,
        instrument,
        dayobs=DAYOBS,
        seqnum=seqnum,
        size_bytes=SIZE_BYTES,
        detectors=detectors,
        overrides_by_detector=overrides,
        imgtype=imgtype,
    )


async def skyrelay(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    """Run ``skyrelay <args> --workdir <cluster>`` as an operator would; return (exit code, stdout, stderr)."""
    run = await run_cli(*args, "--workdir", str(cluster.workdir))
    return run.code, run.out, run.err


async def verify_json(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    """``skyrelay verify --dayobs DAYOBS --json``: exit code and report."""
    code, out, err = await skyrelay(cluster, "verify", "--dayobs", DAYOBS, "--json")
    assert out, f"verify printed nothing (exit {code}): {err}"
    return code, json.loads(out)


def arrivals_named(collector: Collector, names: set[str]) -> Callable[[Any], bool]:
    """A predicate: an arrival notice was received for each of ``names``."""
    return lambda _: names <= {n["name"] for n in collector.of_type("arrival")}


def problem_of(collector: Collector, kind: str, name: str | None = None) -> Callable[[Any], bool]:
    """A predicate: a problem of ``kind`` (about ``name``, if given) was received."""
    return lambda _: any(
        p["kind"] == kind and (name is None or p.get("name") == name) for p in collector.of_type("problem")
    )


def exposure_notice(collector: Collector, obsid: str, state: str) -> Callable[[Any], bool]:
    """A predicate: an exposure notice of ``obsid`` in ``state`` was received."""
    return lambda _: any(n["obsid"] == obsid and n["state"] == state for n in collector.of_type("exposure"))


def the_arrival(collector: Collector, name: str) -> dict[str, Any]:
    """The one arrival notice of ``name`` (fails when there are none or several)."""
    found = [n for n in collector.of_type("arrival") if n["name"] == name]
    assert len(found) == 1, f"{len(found)} arrival notices for {name}"
    return found[0]


def catalog_row(cluster: Cluster, name: str) -> dict[str, Any]:
    """The archive's catalog row of one file, with its ``fixes`` column decoded."""
    rows = query_journal(cluster, "archive", "SELECT * FROM catalog WHERE name = ?", (name,))
    assert len(rows) == 1, f"{len(rows)} catalog rows for {name}"
    row = rows[0]
    row["fixes"] = json.loads(row["fixes"]) if row["fixes"] else None
    return row


def primary_header(path: Path) -> fits.Header:
    """The primary header of an archived file, as an archive user reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        return fits.getheader(path, 0)


def history_of(header: fits.Header) -> str:
    """Every HISTORY card of a header, joined into one text."""
    return "\n".join(str(card) for card in header.get("HISTORY", []))


def fix_of(fixes: Sequence[Mapping[str, Any]], keyword: str) -> Mapping[str, Any]:
    """The one fix of ``keyword``."""
    found = [f for f in fixes if f["keyword"] == keyword]
    assert len(found) == 1, f"fixes of {keyword}: {found} (all fixes: {fixes})"
    return found[0]


# ---- header repair ------------------------------------------------------------------------


async def test_null_imgtype_and_filter_are_filled_from_sibling_detectors_with_proof_kept(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """A ComCam detector with null IMGTYPE and FILTER gets its siblings' values, fixes recorded, received bytes kept."""
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    broken_detector = "R22_S11"
    good = [d for d in COMCAM_DETECTORS if d != broken_detector]
    good_paths = await camera(cluster.inbox, "ComCam", seqnum=1, detectors=good)
    await arrivals.wait_for(arrivals_named(arrivals, {p.name for p in good_paths}), timeout_s=30)

    (broken,) = await camera(
        cluster.inbox,
        "ComCam",
        seqnum=1,
        detectors=[broken_detector],
        overrides={broken_detector: {"IMGTYPE": None, "FILTER": None}},
    )
    received = blake3_of(broken)
    await arrivals.wait_for(arrivals_named(arrivals, {broken.name}), timeout_s=30)
    await arrivals.wait_for(exposure_notice(arrivals, comcam_obsid(1), "complete"), timeout_s=15)

    sibling_filter = primary_header(good_paths[0])["FILTER"]
    notice = the_arrival(arrivals, broken.name)
    assert notice["imgtype"] == "OBJECT"
    assert notice["complete"] is True
    assert notice["checksum"] == received
    assert {f["keyword"]: (f["old"], f["new"], f["source"]) for f in notice["fixes"]} == {
        "IMGTYPE": (None, "OBJECT", "rule:context.sibling_detectors"),
        "FILTER": (None, sibling_filter, "rule:context.sibling_detectors"),
    }

    row = catalog_row(cluster, broken.name)
    obsid = comcam_obsid(1)
    assert row["status"] == "archived"
    assert row["archive_path"] == f"raw/ComCam/{DAYOBS}/{obsid}/{broken.name}"
    assert row["imgtype"] == "OBJECT"
    assert row["fixes"]["fixes"] == notice["fixes"]
    assert row["checksum"] == received
    archived = cluster.archive_root / row["archive_path"]
    assert row["archived_checksum"] == blake3_of(archived) == notice["archived_checksum"]
    assert row["archived_checksum"] != row["checksum"]

    proof = cluster.archive_root / row["fixes"]["proof_path"]
    assert row["fixes"]["proof_path"] == f"proof/ComCam/{DAYOBS}/{obsid}/{broken.name}"
    assert blake3_of(proof) == row["checksum"], "the proof holds the bytes the summit sent"

    header = primary_header(archived)
    assert header["IMGTYPE"] == "OBJECT"
    assert header["FILTER"] == sibling_filter
    history = history_of(header)
    assert "IMGTYPE: null -> 'OBJECT' (rule:context.sibling_detectors)" in history
    assert f"FILTER: null -> '{sibling_filter}' (rule:context.sibling_detectors)" in history
    with fits.open(archived) as fixed, fits.open(proof) as original:
        assert len(fixed) == len(original)
        assert (fixed[1].data == original[1].data).all(), "pixels are untouched by the header fix"

    others = [n for n in arrivals.of_type("arrival") if n["name"] != broken.name]
    assert all(n["fixes"] == [] and n["complete"] is False for n in others)


async def test_mjd_obs_a_day_off_is_fixed_from_date_obs_after_an_early_summit_warning(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """MJD-OBS a day off DATE-OBS is warned about at the summit, then archived with MJD-OBS from DATE-OBS."""
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    summit_problems = await subscribe(cluster, "summit", SUMMIT_PROBLEMS)
    clean = build_primary_header("LATISS", dayobs=DAYOBS, seqnum=2, detector=LATISS_DETECTOR)
    true_mjd = float(clean["MJD-OBS"])
    (path,) = await camera(cluster.inbox, "LATISS", seqnum=2, overrides={LATISS_DETECTOR: {"MJD-OBS": true_mjd + 1.0}})

    await summit_problems.wait_for(problem_of(summit_problems, "header_warning", path.name), timeout_s=30)
    await arrivals.wait_for(arrivals_named(arrivals, {path.name}), timeout_s=30)

    warning = next(p for p in summit_problems.of_type("problem") if p["kind"] == "header_warning")
    assert warning["site"] == "summit"
    assert "time.mjd_mismatch" in {f["rule"] for f in warning["details"]["findings"]}
    notice = the_arrival(arrivals, path.name)
    row = catalog_row(cluster, path.name)
    assert warning["at"] < row["arrived_at"], "the summit warned before the archive stored the file"

    fix = fix_of(notice["fixes"], "MJD-OBS")
    assert fix["source"] == "rule:time.mjd_from_date_obs"
    assert fix["old"] == pytest.approx(true_mjd + 1.0)
    assert fix["new"] == pytest.approx(true_mjd, abs=1e-8)
    assert row["status"] == "archived"
    assert row["fixes"]["fixes"] == notice["fixes"]
    header = primary_header(cluster.archive_root / row["archive_path"])
    assert header["MJD-OBS"] == pytest.approx(true_mjd, abs=1e-8)
    assert header["DATE-OBS"] == clean["DATE-OBS"]
    assert "MJD-OBS" in history_of(header) and "rule:time.mjd_from_date_obs" in history_of(header)
    assert blake3_of(cluster.archive_root / row["fixes"]["proof_path"]) == row["checksum"] == blake3_of(path)


async def test_missing_obsid_is_derived_from_dayobs_and_seqnum_and_names_the_archive_path(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """A file without OBSID is archived under raw/<instrument>/<dayobs>/<OBSID derived from DAYOBS and SEQNUM>/."""
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    (path,) = await camera(cluster.inbox, "LATISS", seqnum=3, overrides={LATISS_DETECTOR: {"OBSID": REMOVE}})
    assert "OBSID" not in primary_header(path)

    await arrivals.wait_for(arrivals_named(arrivals, {path.name}), timeout_s=30)

    obsid = latiss_obsid(3)
    notice = the_arrival(arrivals, path.name)
    assert notice["obsid"] == obsid
    assert notice["archive_path"] == f"raw/LATISS/{DAYOBS}/{obsid}/{path.name}"
    assert fix_of(notice["fixes"], "OBSID") == {
        "keyword": "OBSID",
        "old": None,
        "new": obsid,
        "source": "rule:obsid.from_dayobs_seqnum",
    }
    row = catalog_row(cluster, path.name)
    assert (row["status"], row["obsid"], row["archive_path"]) == ("archived", obsid, notice["archive_path"])
    header = primary_header(cluster.archive_root / row["archive_path"])
    assert header["OBSID"] == obsid
    assert "rule:obsid.from_dayobs_seqnum" in history_of(header)


async def test_correction_file_overrides_a_header_value(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path
) -> None:
    """A correction file <instrument>-<obsid>.yaml overrides a card, and the fix names the file as its source."""
    corrections = tmp_path / "corrections"
    corrections.mkdir()
    obsid = latiss_obsid(7)
    correction = corrections / f"LATISS-{obsid}.yaml"
    correction.write_text("IMGTYPE: OBJECT\n")
    cluster = await make_cluster(correction_dirs=[corrections])
    arrivals = await subscribe(cluster, "archive", ARRIVALS)

    (path,) = await camera(cluster.inbox, "LATISS", seqnum=7, imgtype="ENGTEST")
    await arrivals.wait_for(arrivals_named(arrivals, {path.name}), timeout_s=30)

    notice = the_arrival(arrivals, path.name)
    assert notice["imgtype"] == "OBJECT"
    fix = fix_of(notice["fixes"], "IMGTYPE")
    assert (fix["old"], fix["new"]) == ("ENGTEST", "OBJECT")
    assert fix["source"].startswith("file:")
    assert fix["source"] == f"file:{correction}"
    row = catalog_row(cluster, path.name)
    assert (row["status"], row["imgtype"]) == ("archived", "OBJECT")
    assert row["fixes"]["fixes"] == notice["fixes"]
    header = primary_header(cluster.archive_root / row["archive_path"])
    assert header["IMGTYPE"] == "OBJECT"
    assert "IMGTYPE: 'ENGTEST' -> 'OBJECT'" in history_of(header)
    assert blake3_of(cluster.archive_root / row["fixes"]["proof_path"]) == row["checksum"]


# ---- quarantine ---------------------------------------------------------------------------


async def test_header_beyond_repair_is_quarantined_then_released_after_a_correction_file(
    make_cluster: MakeCluster, subscribe: Subscribe, tmp_path: Path
) -> None:
    """An unknown IMGTYPE is quarantined and listed; after a correction file, release archives it exactly once."""
    corrections = tmp_path / "corrections"
    corrections.mkdir()
    cluster = await make_cluster(correction_dirs=[corrections])
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    problems = await subscribe(cluster, "archive", ARCHIVE_PROBLEMS)
    obsid = latiss_obsid(9)

    (path,) = await camera(cluster.inbox, "LATISS", seqnum=9, overrides={LATISS_DETECTOR: {"IMGTYPE": "BOGUS"}})
    received = blake3_of(path)
    await problems.wait_for(problem_of(problems, "quarantined", path.name), timeout_s=30)

    quarantined_at = f"quarantine/header_invalid/{path.name}"
    row = catalog_row(cluster, path.name)
    assert (row["status"], row["archive_path"]) == ("quarantined", quarantined_at)
    assert row["reason"].startswith("header_invalid") and "imgtype.vocabulary" in row["reason"]
    assert blake3_of(cluster.archive_root / quarantined_at) == received
    problem = next(p for p in problems.of_type("problem") if p["kind"] == "quarantined")
    assert "imgtype.vocabulary" in problem["reason"]
    assert problem["details"]["archive_path"] == quarantined_at
    assert arrivals.of_type("arrival") == []

    code, out, err = await skyrelay(cluster, "quarantine", "list", "--json")
    assert code == 0, err
    (listed,) = json.loads(out)
    assert (listed["name"], listed["archive_path"]) == (path.name, quarantined_at)
    assert "imgtype.vocabulary" in listed["reason"]

    (corrections / f"LATISS-{obsid}.yaml").write_text("IMGTYPE: OBJECT\n")
    code, out, err = await skyrelay(cluster, "quarantine", "release", str(listed["id"]))
    assert code == 0, f"release failed: {out} {err}"
    await arrivals.wait_for(arrivals_named(arrivals, {path.name}), timeout_s=30)

    notice = the_arrival(arrivals, path.name)
    archive_path = f"raw/LATISS/{DAYOBS}/{obsid}/{path.name}"
    assert notice["archive_path"] == archive_path
    assert notice["imgtype"] == "OBJECT"
    assert notice["checksum"] == received
    fix = fix_of(notice["fixes"], "IMGTYPE")
    assert (fix["old"], fix["new"]) == ("BOGUS", "OBJECT") and fix["source"].startswith("file:")
    row = catalog_row(cluster, path.name)
    assert (row["status"], row["archive_path"], row["reason"]) == ("archived", archive_path, None)
    assert row["released_at"] is not None
    assert primary_header(cluster.archive_root / archive_path)["IMGTYPE"] == "OBJECT"
    assert blake3_of(cluster.archive_root / row["fixes"]["proof_path"]) == received
    code, out, err = await skyrelay(cluster, "quarantine", "list", "--json")
    assert (code, json.loads(out)) == (0, [])

    code, out, err = await skyrelay(cluster, "quarantine", "release", str(listed["id"]))
    assert code != 0, f"a second release of #{listed['id']} succeeded: {out}"
    assert len([n for n in arrivals.of_type("arrival") if n["name"] == path.name]) == 1


# ---- completeness and verify --------------------------------------------------------------


async def test_missing_detector_makes_the_exposure_late_and_verify_fails(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """A detector never sent makes its exposure late (notice, problem, verify exit 1); a full one is complete."""
    cluster = await make_cluster(tuning={"late_after_s": 3.0})
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    problems = await subscribe(cluster, "archive", ARCHIVE_PROBLEMS)
    never_sent = "R22_S22"
    sent = [d for d in COMCAM_DETECTORS if d != never_sent]
    partial = await camera(cluster.inbox, "ComCam", seqnum=1, detectors=sent)
    await arrivals.wait_for(exposure_notice(arrivals, comcam_obsid(1), "late"), timeout_s=30)
    await problems.wait_for(problem_of(problems, "exposure_late"), timeout_s=10)

    late = next(n for n in arrivals.of_type("exposure") if n["obsid"] == comcam_obsid(1))
    assert (late["state"], late["expected"], late["arrived"], late["missing"]) == ("late", 9, 8, [never_sent])
    assert late["instrument"] == "ComCam" and late["seqnum"] == 1
    problem = next(p for p in problems.of_type("problem") if p["kind"] == "exposure_late")
    assert problem["details"]["obsid"] == comcam_obsid(1)
    assert problem["details"]["missing"] == [never_sent]
    assert {n["name"] for n in arrivals.of_type("arrival")} == {p.name for p in partial}
    assert all(n["complete"] is False for n in arrivals.of_type("arrival"))

    full = await camera(cluster.inbox, "ComCam", seqnum=2)
    await arrivals.wait_for(exposure_notice(arrivals, comcam_obsid(2), "complete"), timeout_s=30)
    await arrivals.wait_for(arrivals_named(arrivals, {p.name for p in full}), timeout_s=30)
    complete = next(
        n for n in arrivals.of_type("exposure") if n["obsid"] == comcam_obsid(2) and n["state"] == "complete"
    )
    assert (complete["expected"], complete["arrived"], complete["missing"]) == (9, 9, [])
    second = [n for n in arrivals.of_type("arrival") if n["obsid"] == comcam_obsid(2)]
    assert sorted(n["name"] for n in second) == sorted(p.name for p in full)
    assert [n["complete"] for n in second] == [False] * 8 + [True], "only the last arrival completes the exposure"

    code, report = await verify_json(cluster)
    assert code == 1
    assert report["ok"] is False
    by_obsid = {e["obsid"]: e for e in report["exposures"]}
    assert by_obsid[comcam_obsid(1)]["missing"] == [never_sent]
    assert by_obsid[comcam_obsid(1)]["late"] == [never_sent]
    assert by_obsid[comcam_obsid(1)]["state"] == "late"
    assert by_obsid[comcam_obsid(2)]["missing"] == []
    assert (report["complete"], report["incomplete"], report["gaps"]) == (1, 1, {})
    code, out, _ = await skyrelay(cluster, "verify", "--dayobs", DAYOBS)
    assert code == 1
    assert never_sent in out

    await camera(cluster.inbox, "ComCam", seqnum=1, detectors=[never_sent])
    await arrivals.wait_for(exposure_notice(arrivals, comcam_obsid(1), "complete"), timeout_s=30)
    code, report = await verify_json(cluster)
    assert (code, report["ok"], report["incomplete"]) == (0, True, 0)


async def test_an_exposure_still_arriving_is_reported_but_does_not_fail_verify(
    make_cluster: MakeCluster, subscribe: Subscribe
) -> None:
    """Within late_after_s of its first detector an exposure is arriving, not missing: verify exits 0."""
    cluster = await make_cluster(tuning={"late_after_s": 300.0})
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    partial = await camera(cluster.inbox, "ComCam", seqnum=1, detectors=["R22_S00", "R22_S11"])
    await arrivals.wait_for(arrivals_named(arrivals, {p.name for p in partial}), timeout_s=30)

    code, report = await verify_json(cluster)
    assert (code, report["ok"], report["arriving"], report["incomplete"], report["complete"]) == (0, True, 1, 0, 0)
    (exposure,) = report["exposures"]
    assert (exposure["state"], exposure["arrived"], exposure["late"]) == ("pending", 2, [])
    assert len(exposure["missing"]) == 7
    code, out, _ = await skyrelay(cluster, "verify", "--dayobs", DAYOBS)
    assert code == 0
    assert "1 still arriving" in out and "awaiting R22_S01" in out


async def test_sequence_gap_fails_verify_until_the_missing_exposure_arrives(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """Exposures 1, 2 and 4 make verify report the gap [3] and exit 1; once 3 arrives, verify exits 0."""
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    for seqnum in (1, 2, 4):
        await camera(cluster.inbox, "LATISS", seqnum=seqnum)
    for seqnum in (1, 2, 4):
        await arrivals.wait_for(exposure_notice(arrivals, latiss_obsid(seqnum), "complete"), timeout_s=30)

    code, report = await verify_json(cluster)
    assert code == 1
    assert report["gaps"] == {"LATISS": [3]}
    assert report["ok"] is False
    assert [e["seqnum"] for e in report["exposures"]] == [1, 2, 4]
    assert all(e["missing"] == [] for e in report["exposures"])
    code, out, _ = await skyrelay(cluster, "verify", "--dayobs", DAYOBS)
    assert code == 1
    assert "gap" in out and "3" in out

    await camera(cluster.inbox, "LATISS", seqnum=3)
    await arrivals.wait_for(exposure_notice(arrivals, latiss_obsid(3), "complete"), timeout_s=30)
    code, report = await verify_json(cluster)
    assert code == 0
    assert (report["ok"], report["gaps"], report["complete"], report["incomplete"]) == (True, {}, 4, 0)
    code, out, _ = await skyrelay(cluster, "verify", "--dayobs", DAYOBS)
    assert code == 0
    assert read_catalog(cluster) and all(r["status"] == "archived" for r in read_catalog(cluster))


# ---- known product bugs (see the report); last so that -x runs everything else first -------


async def test_truncated_and_non_fits_files_are_quarantined_and_never_deleted(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """A truncated FITS goes to quarantine/truncated/, a non-FITS file to quarantine/not_fits/; no bytes are deleted."""
    problems = await subscribe(cluster, "archive", ARCHIVE_PROBLEMS)
    staging = cluster.workdir / "camera-staging"
    (whole,) = await camera(staging, "LATISS", seqnum=11)
    size = whole.stat().st_size
    os.truncate(whole, size // 2 + 17)
    truncated = cluster.inbox / whole.name
    os.replace(whole, truncated)
    junk = drop_into_inbox(cluster, "observing-log.txt", b"seeing 0.7 arcsec, dome open\n" * 300)
    sent = await checksums([truncated, junk])

    for name in sent:
        await problems.wait_for(problem_of(problems, "quarantined", name), timeout_s=30)
    await wait_settled(cluster, archived=2, wake=problems)

    rows = {name: catalog_row(cluster, name) for name in sent}
    for name, row in rows.items():
        assert row["status"] == "quarantined"
        assert row["checksum"] == sent[name]
        assert blake3_of(cluster.archive_root / row["archive_path"]) == sent[name], "the archive kept the bytes"
        assert blake3_of(cluster.inbox / name) == sent[name], "the summit still has its file"
    assert not (cluster.archive_root / "raw").exists()
    summit = query_journal(cluster, "summit", "SELECT name, custody_status FROM files ORDER BY name")
    assert {r["name"]: r["custody_status"] for r in summit} == {name: "quarantined" for name in sent}
    expected = {truncated.name: "truncated", junk.name: "not_fits"}
    assert {name: row["archive_path"] for name, row in rows.items()} == {
        name: f"quarantine/{reason}/{name}" for name, reason in expected.items()
    }
    assert {name: row["reason"].partition(":")[0] for name, row in rows.items()} == expected


async def test_exposure_complete_notice_follows_the_arrival_notice_that_completed_it(
    cluster: Cluster, subscribe: Subscribe
) -> None:
    """A subscriber told an exposure is complete has already received the arrival notice of each of its files."""
    arrivals = await subscribe(cluster, "archive", ARRIVALS)
    (path,) = await camera(cluster.inbox, "LATISS", seqnum=5)
    await arrivals.wait_for(exposure_notice(arrivals, latiss_obsid(5), "complete"), timeout_s=30)
    await arrivals.wait_for(arrivals_named(arrivals, {path.name}), timeout_s=10)

    order = [m.data["type"] for m in arrivals.messages if isinstance(m.data, dict)]
    assert order == ["arrival", "exposure"], f"a subscriber received {order}"
