"""``skyrelay rehearse``: a one-day rehearsal through the real CLI, its verdict against the truth, and its report.

One reduced rehearsal (``--days 1 --fields 1``: an afternoon of calibrations, then a night with every trouble
and the network drill, on a real drill cluster of ComCam's nine small detectors) runs once for the module;
the tests read what it wrote (``truth.json``, ``observed.json``, ``report.html``) and the archive it left.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import open_page
from conftest import REPO

from ops.rehearsal.checks import run_checks

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True, slots=True)
class Rehearsed:
    """The module's rehearsal: its workdir, exit code and ``--json`` summary."""

    workdir: Path
    code: int
    summary: dict[str, Any]
    stderr: str


def _skyrelay(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsed]:
    """One ``skyrelay rehearse --days 1 --fields 1 --json`` run (minutes, once for the module)."""
    if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
        pytest.skip("mosquitto is not installed")
    workdir = tmp_path_factory.mktemp("rehearsal") / "W"
    run = _skyrelay("rehearse", "--workdir", str(workdir), "--days", "1", "--fields", "1", "--json", timeout_s=840)
    try:
        summary = json.loads(run.stdout)
    except ValueError:
        summary = {}
    yield Rehearsed(workdir, run.returncode, summary, run.stderr)


def _recorded(workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return json.loads((workdir / "truth.json").read_text()), json.loads((workdir / "observed.json").read_text())


def test_a_one_day_rehearsal_archives_everything_it_wrote_and_exits_0(rehearsed: Rehearsed) -> None:
    """Exit 0 and every check passes: each written file archived once with its checksum, the masters, calexps
    and pairs the rules give (the lost and bad-seeing visits, the missing detector), the quarantined header
    released after its correction file, alerts at the injected transients, failover and failback measured."""
    detail = f"{json.dumps(rehearsed.summary)[:4000]} {rehearsed.stderr[-3000:]}"
    assert rehearsed.code == 0, f"exit {rehearsed.code}: {detail}"
    summary = rehearsed.summary
    assert summary["ok"] is True
    assert {c["name"]: c["ok"] for c in summary["checks"]} == {
        "files": True,
        "quarantine": True,
        "completeness": True,
        "masters": True,
        "calexps": True,
        "diffs": True,
        "alerts": True,
        "network drill": True,
        "daemons": True,
    }
    figures = summary["figures"]
    truth, observed = _recorded(rehearsed.workdir)
    assert figures["files_archived"] == figures["files_written"] == len(truth["files"]) > 150
    assert figures["failover_s"] is not None and figures["failback_s"] is not None
    assert figures["products"]["bias"] == figures["products"]["dark"] == figures["products"]["flat"] == 9
    assert figures["injections_recovered"] > 0
    assert len(truth["lost"]) == 1 and len(truth["corrections"]) == 1
    released = next(r for r in observed["catalog"] if r["name"] == truth["corrections"][0]["name"])
    assert released["status"] == "archived" and released["released_at"] is not None
    assert (rehearsed.workdir / "report.html").is_file()


async def test_the_report_opens_in_a_browser_with_its_verdict_and_plots(rehearsed: Rehearsed) -> None:
    """``report.html`` (file://, no network) shows the all-good verdict first and its plots as loaded images."""
    report = rehearsed.workdir / "report.html"
    assert "http://" not in report.read_text() and "https://" not in report.read_text()
    async with open_page(report.as_uri()) as page:
        verdict = await page.locator(".verdict").first.inner_text()
        sizes = await page.eval_on_selector_all(
            "img.plot", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
        )
        headings = await page.locator("h2").all_inner_texts()
    assert "All good" in verdict
    alts = {alt for _, _, _, alt in sizes}
    assert {"latency histogram", "latency over time", "throughput over time", "completeness by SNR", "timeline"} <= alts
    assert any(alt.startswith("master ") for alt in alts)
    assert all(done and width > 0 and height > 0 for done, width, height, _ in sizes)
    assert "Completeness per night and exposure" in headings and "Master calibrations" in headings


def test_a_file_deleted_from_the_archive_fails_the_recheck_and_names_it(rehearsed: Rehearsed) -> None:
    """``rehearse --recheck`` after an archived raw is deleted: exit 1, the verdict names the file and says
    it is gone (stdout and report); put back, the recheck is all good again."""
    _, observed = _recorded(rehearsed.workdir)
    row = next(r for r in observed["catalog"] if r["name"].endswith("_R22_S11.fits") and r["status"] == "archived")
    path = Path(observed["archive_root"]) / row["archive_path"]
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        run = _skyrelay("rehearse", "--workdir", str(rehearsed.workdir), "--recheck", timeout_s=240)
        report = (rehearsed.workdir / "report.html").read_text()
    finally:
        aside.rename(path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "NOT OK" in run.stdout and row["name"] in run.stdout and "is gone" in run.stdout
    assert "Not OK" in report and row["name"] in report
    again = _skyrelay("rehearse", "--workdir", str(rehearsed.workdir), "--recheck", timeout_s=240)
    assert again.returncode == 0, again.stdout


def test_a_product_missing_from_the_record_fails_its_check(rehearsed: Rehearsed) -> None:
    """The checks on the recorded truth: without one difference's notice the diffs check fails naming its quad
    and detector; without one master's notice the masters check does; the untouched record is all good."""
    truth, observed = _recorded(rehearsed.workdir)
    assert run_checks(truth, observed, rehash=False)["ok"] is True
    for kind, check in (("diff", "diffs"), ("flat", "masters")):
        broken = copy.deepcopy(observed)
        victim = next(n for n in broken["notices"] if n["message"].get("kind") == kind)
        broken["notices"].remove(victim)
        verdict = run_checks(truth, broken, rehash=False)
        failed = {c["name"]: c for c in verdict["checks"] if not c["ok"]}
        assert verdict["ok"] is False and check in failed
        assert victim["message"]["detector"] in " ".join(failed[check]["problems"])
