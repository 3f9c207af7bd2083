"""Difference imaging per detector: an exposure of several detectors gives each its own calexp and pairs.

Found by the rehearsal: the archive planned calexps by OBSID and pairs by GROUPID alone, so only the first
detector of each exposure was processed. Real raws (small 256 px detectors) of two detectors of one quad
go into the summit inbox of a real cluster; the archive's journal and notice log are the truth.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
from conftest import DAYOBS, INSTRUMENT, MakeCluster, query_journal

from ops.simulate.calibs import write_calib_day
from ops.simulate.night import SCIENCE_SMALL, write_night
from processors.pairing import VisitState, pairs_to_make

pytestmark = pytest.mark.timeout(240)

DETECTORS = ("R22_S11", "R22_S12")


async def test_each_detector_of_a_quad_gets_its_calexps_and_its_pairs(make_cluster: MakeCluster) -> None:
    """Bias and flat days of two detectors, then one quad of both: four calexps per detector, and per detector
    the pairs the quad rules give for that detector's own visit verdicts (2-1 and 4-3 when all pass; a visit
    failing the quality cut on one detector changes that detector's pairs only)."""
    cluster = await make_cluster(processing={"quiet_s": 30, "chunk_end_s": 5})
    for detector in DETECTORS:
        await asyncio.to_thread(write_calib_day, cluster.inbox, instrument=INSTRUMENT, detector=detector,
                                dayobs=DAYOBS, spec=SCIENCE_SMALL, bias=5, flat=5)  # fmt: skip
    for detector in DETECTORS:
        await asyncio.to_thread(write_night, cluster.inbox, instrument=INSTRUMENT, detector=detector, dayobs=DAYOBS,
                                fields=1, small=True)  # fmt: skip
    # Another process's journal announces nothing: bounded re-reads of the archive's journal until every
    # detector has its four calexps (product notices of the two detectors interleave with diffs, so a
    # count of notices would not tell).
    verdicts: dict[str, dict[int, VisitState]] = defaultdict(dict)
    async with asyncio.timeout(200):
        while {d: len(v) for d, v in verdicts.items()} != {d: 4 for d in DETECTORS}:
            await asyncio.sleep(0.2)
            verdicts = defaultdict(dict)
            rows = query_journal(cluster, "archive", "SELECT detector, provenance FROM products WHERE kind = 'calexp'")
            for row in rows:
                prov = json.loads(row["provenance"])
                index = int(str(prov["obsid"]).rsplit("_", 1)[1]) - 99
                verdicts[row["detector"]][index] = VisitState.OK if prov["quality"]["ok"] else VisitState.BAD
    expected = {d: sorted(f"{p.science}-{p.reference}" for p in pairs_to_make(v, chunk_ended=True))
                for d, v in verdicts.items()}  # fmt: skip
    pairs: dict[str, list[str]] = {}
    async with asyncio.timeout(150):
        while pairs != expected:
            await asyncio.sleep(0.2)
            rows = query_journal(cluster, "archive", "SELECT detector, sequence FROM jobs WHERE step = 'diff' AND "
                                 "state = 'done'")  # fmt: skip
            found: dict[str, list[str]] = defaultdict(list)
            for row in rows:
                found[row["detector"]].append(row["sequence"].rsplit("/", 1)[1])
            pairs = {d: sorted(v) for d, v in found.items()}
    assert {d: len(v) for d, v in verdicts.items()} == {d: 4 for d in DETECTORS}
    assert set(pairs) == set(DETECTORS) and all(pairs.values())
