"""The rehearsal's verdict: what the archive holds, checked against the truth of everything written.

:func:`run_checks` is a pure function of the truth (``W/truth.json``) and of what was observed
(``W/observed.json``: the archive's notice log, catalog, ``verify`` reports, quarantine, events) plus, when
``archive_root`` is readable, the archived files themselves (each re-hashed). Each check says what it
expected and lists exactly what is missing or wrong.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops.rehearsal.camera import blake3_file
from processors.pairing import VisitState, pairs_to_make

MATCH_RADIUS_PX = 2.0
"""An alert within this distance of an injected transient (science frame) recovers it."""
ALERT_COMPLETENESS_MIN = 0.9
"""Recovered fraction required of injections at difference SNR >= 10."""


@dataclass(slots=True)
class Check:
    """One line of the verdict."""

    name: str
    ok: bool
    summary: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Shortfalls the truth cannot predict and the check allows (named, shown in the report)."""


def _arrivals(observed: dict[str, Any]) -> list[dict[str, Any]]:
    return [n["message"] for n in observed["notices"] if n["message"].get("type") == "arrival"]


def _products(observed: dict[str, Any], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        n["message"]
        for n in observed["notices"]
        if n["topic"].startswith("skyrelay/v1/products/") and n["message"].get("kind") in kinds
    ]


def _limit(items: list[str], n: int = 25) -> list[str]:
    return items[:n] + ([f"... and {len(items) - n} more"] if len(items) > n else [])


def check_files(truth: dict[str, Any], observed: dict[str, Any], *, rehash: bool) -> Check:
    """Every file written is archived exactly once, with the checksum the camera wrote; nothing else is."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in observed["catalog"]:
        rows[row["name"]].append(row)
    notices: dict[str, set[str]] = defaultdict(set)
    for arrival in _arrivals(observed):
        notices[arrival["name"]].add(arrival["notice_id"])
    root = Path(observed["archive_root"])
    problems: list[str] = []
    for name, record in sorted(truth["files"].items()):
        found = rows.get(name, [])
        if not found:
            problems.append(f"{name}: not in the archive's catalog")
            continue
        if len(found) > 1:
            problems.append(f"{name}: {len(found)} catalog rows")
        row = found[0]
        if row["status"] != "archived":
            problems.append(f"{name}: {row['status']} ({row['reason']})")
            continue
        if row["checksum"] != record["checksum"]:
            problems.append(f"{name}: received checksum {row['checksum']} != written {record['checksum']}")
        if len(notices.get(name, ())) != 1:
            problems.append(f"{name}: {len(notices.get(name, ()))} arrival notices")
        if rehash:
            path = root / row["archive_path"]
            if not path.is_file():
                problems.append(f"{name}: archived file {row['archive_path']} is gone")
            elif blake3_file(path) != row["archived_checksum"]:
                problems.append(f"{name}: archived file {row['archive_path']} does not match its checksum")
    extra = sorted(set(rows) - set(truth["files"]))
    problems += [f"{name}: archived but never written by the rehearsal" for name in extra]
    n = len(truth["files"])
    return Check(
        "files",
        not problems,
        f"{n - len([p for p in problems if not p.startswith('...')])} of {n} files archived exactly once "
        f"with their checksum" + (" (archived bytes re-hashed)" if rehash else ""),
        _limit(problems),
    )


def check_quarantine(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """The header beyond repair was quarantined, fixed by its correction file, released, archived once."""
    problems: list[str] = []
    rows = {r["name"]: r for r in observed["catalog"]}
    for correction in truth["corrections"]:
        name = correction["name"]
        row = rows.get(name)
        if row is None or row["released_at"] is None:
            problems.append(f"{name}: never released from quarantine")
            continue
        if "file:" not in str(row["fixes"]):
            problems.append(f"{name}: released without a fix from its correction file")
    now = observed.get("quarantine_now")
    if now:
        problems += [f"{q['name']}: still in quarantine ({q['reason']})" for q in now]
    elif now is None:
        problems.append("`skyrelay quarantine list` did not answer")
    n = len(truth["corrections"])
    return Check(
        "quarantine", not problems, f"{n} file(s) quarantined, corrected and released; quarantine empty", problems
    )


def check_completeness(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """``skyrelay verify`` per day says exactly what the camera did not write (the missing detector, the lost
    visits' sequence numbers) and nothing more; nothing is overdue."""
    problems: list[str] = []
    lost_seqnums: dict[str, list[int]] = defaultdict(list)
    for obsid, lost in truth["lost"].items():
        lost_seqnums[lost["dayobs"]].append(int(obsid.rsplit("_", 1)[1]))
    for dayobs in truth["plan"]["dayobs"]:
        entry = observed["verify"].get(dayobs)
        if entry is None or "exposures" not in entry.get("report", {}):
            problems.append(f"{dayobs}: no verify report ({(entry or {}).get('report')})")
            continue
        report = entry["report"]
        seen = {e["obsid"]: e for e in report["exposures"]}
        expected = {o: e for o, e in truth["exposures"].items() if e["dayobs"] == dayobs}
        for obsid, exp in sorted(expected.items()):
            want_missing = sorted(set(exp["expected"]) - set(exp["written"]))
            got = seen.get(obsid)
            if got is None:
                problems.append(f"{dayobs} {obsid}: not in verify")
            elif sorted(got["missing"]) != want_missing:
                problems.append(f"{dayobs} {obsid} ({exp['label']}): missing {got['missing']}, expected {want_missing}")
        problems += [f"{dayobs} {o}: in verify, never written" for o in sorted(set(seen) - set(expected))]
        gaps = sorted(int(s) for g in report.get("gaps", {}).values() for s in g)
        if gaps != sorted(lost_seqnums.get(dayobs, [])):
            problems.append(f"{dayobs}: sequence gaps {gaps}, expected (lost visits) {sorted(lost_seqnums[dayobs])}")
        in_flight = report.get("in_flight") or {}
        if in_flight.get("overdue"):
            problems.append(f"{dayobs}: {in_flight['overdue']} file(s) overdue")
        if report.get("arriving"):
            problems.append(f"{dayobs}: {report['arriving']} exposure(s) still arriving at verification")
    n = len(truth["exposures"])
    return Check(
        "completeness",
        not problems,
        f"verify of {len(truth['plan']['dayobs'])} day(s), {n} exposures: only what was never written is missing",
        _limit(problems),
    )


def _sequence_of(truth: dict[str, Any], product: dict[str, Any]) -> dict[str, Any] | None:
    names = {i.get("name") for i in product.get("inputs") or []}
    seq: dict[str, Any]
    for seq in truth["sequences"]:
        if seq["kind"] == product["kind"] and seq["detector"] == product["detector"] and names & set(seq["names"]):
            return seq
    return None


def check_masters(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """One master per calibration sequence and detector, from the frames the truth says, leaving out the
    frames whose illumination changed."""
    problems: list[str] = []
    made: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for product in _products(observed, ("bias", "dark", "flat")):
        seq = _sequence_of(truth, product)
        if seq is None:
            problems.append(f"{product['kind']} {product['product_id']} ({product['detector']}): of no sequence")
            continue
        made[id(seq)].append(product)
    for seq in truth["sequences"]:
        label = f"day {seq['day']} {seq['kind']} #{seq['step'] + 1} {seq['detector']}"
        products = made.get(id(seq), [])
        if len(products) != 1:
            problems.append(f"{label}: {len(products)} masters")
            continue
        product = products[0]
        used = product["stats"].get("frames_used")
        left = sorted(i["name"] for i in product.get("left_out") or [])
        if used != seq["frames_used"]:
            problems.append(f"{label}: {used} frames used, expected {seq['frames_used']}")
        if left != seq["left_out"]:
            problems.append(f"{label}: left out {left}, expected {seq['left_out']}")
    return Check(
        "masters",
        not problems,
        f"{len(truth['sequences'])} masters (one per sequence and detector), left-out frames as the truth says",
        _limit(problems),
    )


def _visit_index(truth: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(v["obsid"], v["detector"]): v for v in truth["visits"].values()}


def check_calexps(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """A calexp for every science frame archived; the bad-seeing visit fails its quality cut, no other does."""
    problems: list[str] = []
    warnings: list[str] = []
    calexps: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for product in _products(observed, ("calexp",)):
        calexps[(product["visits"][0], product["detector"])].append(product)
    visits = _visit_index(truth)
    for key, visit in sorted(visits.items()):
        if not visit["written"]:
            continue
        made = calexps.get(key, [])
        if len(made) != 1:
            problems.append(f"{key[0]} {key[1]}: {len(made)} calexps")
            continue
        ok = made[0]["stats"].get("ok")
        if visit["bad_seeing"] and ok is not False:
            problems.append(f'{key[0]} {key[1]}: bad seeing ({visit["seeing_arcsec"]:.1f}") passed the quality cut')
        if not visit["bad_seeing"] and ok is not True:
            reasons = made[0]["stats"].get("reasons")
            if _by_chance(made[0]):
                warnings.append(
                    f"{key[0]} {key[1]} ({visit['group_id']} v{visit['curindex']}, seeing "
                    f'{visit["seeing_arcsec"]:.2f}"): too few isolated PSF stars on a small detector, '
                    "treated as lost"
                )
            else:
                problems.append(f"{key[0]} {key[1]}: failed the quality cut ({reasons})")
    n = sum(1 for v in visits.values() if v["written"])
    return Check(
        "calexps",
        not problems,
        f"{n} calexps; bad-seeing visits rejected by the quality cut",
        _limit(problems),
        warnings,
    )


def pairs_made(truth: dict[str, Any], observed: dict[str, Any]) -> dict[tuple[str, str], list[list[Any]]]:
    """(GROUPID, detector) → [science CURINDEX, reference CURINDEX, reason] of every diff made."""
    visits = _visit_index(truth)
    made: dict[tuple[str, str], list[list[Any]]] = defaultdict(list)
    for product in _products(observed, ("diff",)):
        science, reference = product["visits"][0], product["visits"][1]
        sci = visits.get((science, product["detector"]))
        ref = visits.get((reference, product["detector"]))
        if sci is None or ref is None:
            made[("?", product["detector"])].append([science, reference, product["stats"].get("reason")])
            continue
        made[(sci["group_id"], product["detector"])].append(
            [sci["curindex"], ref["curindex"], product["stats"].get("reason")]
        )
    return made


def _by_chance(calexp: dict[str, Any]) -> bool:
    """A good-seeing visit rejected only for too few isolated PSF stars: chance on a small crowded detector."""
    stats = calexp.get("stats") or {}
    return stats.get("ok") is False and list(stats.get("reasons") or []) == ["psf_stars"]


_REFUSED = re.compile(r"^diff (?P<group>\S+)/(?P<sci>\d+)-(?P<ref>\d+) \((?P<detector>[^)]+)\): (?P<why>.*)$", re.S)
_TOO_FEW_STARS = "usable stars to fit the matching kernel"


def refused_pairs(reports: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], str]:
    """(GROUPID, detector, science, reference) → why, of every difference the archive refused for want of
    stars to match the PSFs (a small detector's crowded field can leave too few)."""
    out = {}
    for report in reports:
        if report.get("kind") != "science_refused":
            continue
        match = _REFUSED.match(str(report.get("text") or ""))
        if match and _TOO_FEW_STARS in match["why"]:
            out[(match["group"], match["detector"], int(match["sci"]), int(match["ref"]))] = match["why"]
    return out


def _drop_refused(
    pairs: dict[tuple[str, str], list[list[Any]]], refused: dict[tuple[str, str, int, int], str]
) -> dict[tuple[str, str], list[list[Any]]]:
    if not refused:
        return pairs
    return {
        key: [p for p in value if (key[0], key[1], int(p[0]), int(p[1])) not in refused] for key, value in pairs.items()
    }


def expected_pairs(
    truth: dict[str, Any], products: list[dict[str, Any]], reports: list[dict[str, Any]] | None = None
) -> dict[tuple[str, str], list[list[Any]]]:
    """(GROUPID, detector) → the pairs the quad rules give: from the truth (lost, missing and bad-seeing
    visits), counting as lost a good visit the archive rejected by chance (:func:`_by_chance`), and without
    the differences refused for too few stars to match the PSFs (:func:`refused_pairs`)."""
    refused = refused_pairs(reports or [])
    chance = {(p["visits"][0], p["detector"]) for p in products if p.get("kind") == "calexp" and _by_chance(p)}
    if not chance:
        return _drop_refused({(e["group_id"], e["detector"]): e["pairs"] for e in truth["pairs"]}, refused)
    states: dict[tuple[str, str], dict[int, VisitState]] = defaultdict(dict)
    for visit in truth["visits"].values():
        key = (visit["group_id"], visit["detector"])
        states.setdefault(key, {})
        if visit["written"]:
            bad = visit["bad_seeing"] or (visit["obsid"], visit["detector"]) in chance
            states[key][visit["curindex"]] = VisitState.BAD if bad else VisitState.OK
    for entry in truth["pairs"]:
        states.setdefault((entry["group_id"], entry["detector"]), {})
    return _drop_refused(
        {
            key: sorted([p.science, p.reference, p.reason] for p in pairs_to_make(s, chunk_ended=True))
            for key, s in states.items()
        },
        refused,
    )


def check_diffs(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """Exactly the pairs the quad rules give for what arrived (regular, lost-visit mapping, desperate)."""
    made = pairs_made(truth, observed)
    products = _products(observed, ("calexp",))
    expected = expected_pairs(truth, products, observed.get("reports"))
    problems: list[str] = []
    for key, pairs in sorted(expected.items()):
        want = sorted(tuple(p) for p in pairs)
        got = sorted(tuple(p) for p in made.get(key, []))
        if got != want:
            problems.append(f"{key[0]} {key[1]}: pairs {got}, expected {want}")
    problems += [f"{k[0]} {k[1]}: pairs {v} never expected" for k, v in made.items() if k not in expected]
    n = sum(len(p) for p in expected.values())
    planned = sum(len(e["pairs"]) for e in truth["pairs"])
    refused = refused_pairs(observed.get("reports") or [])
    warnings = [
        f"{g} {d}: difference {s}-{r} refused by the archive: {why}" for (g, d, s, r), why in sorted(refused.items())
    ]
    if n != planned:
        warnings.append(f"{planned - n} difference(s) fewer than planned: visits rejected by chance, or refused")
    return Check(
        "diffs",
        not problems,
        f"{n} differences, as the pairing rules give (lost visits included)",
        _limit(problems),
        warnings,
    )


def match_alerts(truth: dict[str, Any], observed: dict[str, Any]) -> list[dict[str, Any]]:
    """Every injection a diff should show (its flux differs between the two visits), and the alert that
    recovered it (nearest within :data:`MATCH_RADIUS_PX`, right sign) or none."""
    visits = _visit_index(truth)
    by_diff: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for alert in observed["alerts"]:
        by_diff[(alert["visits"][0], alert["visits"][1], alert["detector"])].append(alert)
    out = []
    for product in _products(observed, ("diff",)):
        sci = visits.get((product["visits"][0], product["detector"]))
        ref = visits.get((product["visits"][1], product["detector"]))
        if sci is None or ref is None:
            continue
        for obj in sci["objects"]:
            ref_obj = next((o for o in ref["objects"] if o["id"] == obj["id"]), None)
            delta = float(obj["flux_e"]) - float(ref_obj["flux_e"] if ref_obj else 0.0)
            if abs(delta) < 1e-6:
                continue
            candidates = []
            for alert in by_diff.get((sci["obsid"], ref["obsid"], product["detector"]), []):
                source = alert["alert"]["diaSource"]
                distance = math.hypot(float(source["x"]) - float(obj["x_px"]), float(source["y"]) - float(obj["y_px"]))
                if distance <= MATCH_RADIUS_PX and bool(source.get("isNegative")) == (delta < 0):
                    candidates.append((distance, alert))
            best = min(candidates, key=lambda c: c[0]) if candidates else None
            out.append(
                {
                    "diff": product["product_id"],
                    "detector": product["detector"],
                    "science": sci["obsid"],
                    "reference": ref["obsid"],
                    "group_id": sci["group_id"],
                    "pair": f"{sci['curindex']}-{ref['curindex']}",
                    "object": obj["id"],
                    "snr": float(sci["snr"]),
                    "negative": delta < 0,
                    "x": obj["x_px"],
                    "y": obj["y_px"],
                    "alert_id": best[1]["alert_id"] if best else None,
                    "distance_px": round(best[0], 3) if best else None,
                    "measured_snr": best[1]["alert"]["diaSource"].get("snr") if best else None,
                }
            )
    return out


def completeness_by_snr(matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per injected SNR: injections, recovered, fraction."""
    groups: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for m in matches:
        groups[m["snr"]].append(m)
    return [
        {
            "snr": snr,
            "injected": len(g),
            "recovered": sum(m["alert_id"] is not None for m in g),
            "fraction": sum(m["alert_id"] is not None for m in g) / len(g),
        }
        for snr, g in sorted(groups.items())
    ]


def check_alerts(truth: dict[str, Any], observed: dict[str, Any], matches: list[dict[str, Any]]) -> Check:
    """Alerts recover the injected transients: at least 90 % at difference SNR >= 10; alert ids unique."""
    ids = Counter(a["alert_id"] for a in observed["alerts"])
    problems = [f"alert {i} published {n} times" for i, n in ids.items() if n > 1]
    bright = [m for m in matches if m["snr"] >= 10]
    found = sum(m["alert_id"] is not None for m in bright)
    if not matches:
        problems.append("no injected transient was expected in any difference (nothing to recover)")
    elif bright and found / len(bright) < ALERT_COMPLETENESS_MIN:
        missed = [
            f"{m['science']} {m['detector']} pair {m['pair']} SNR {m['snr']:g} at ({m['x']:.1f}, {m['y']:.1f})"
            for m in bright
            if m["alert_id"] is None
        ]
        problems.append(f"only {found}/{len(bright)} injections at SNR >= 10 recovered")
        problems += _limit(missed, 10)
    total = sum(m["alert_id"] is not None for m in matches)
    offsets = [m["distance_px"] for m in matches if m["distance_px"] is not None]
    median = f", median offset {statistics.median(offsets):.2f} px" if offsets else ""
    return Check(
        "alerts",
        not problems,
        f"{total}/{len(matches)} injections recovered ({found}/{len(bright)} at SNR >= 10){median}; "
        f"{len(observed['alerts'])} alerts, ids unique",
        problems,
    )


def drill_figures(observed: dict[str, Any]) -> dict[str, Any]:
    """Failover (cut → first file archived by a route avoiding the link) and failback (restore → first new
    file archived by primary again), from the arrival notices."""
    drill = observed.get("drill") or {}
    arrivals = sorted(_arrivals(observed), key=lambda a: a["arrived_at"])
    out: dict[str, Any] = {
        k: drill.get(k) for k in ("cut_at", "broker_killed_at", "broker_restarted_at", "restored_at")
    }
    cut, restored = drill.get("cut_at"), drill.get("restored_at")
    if cut is not None:
        first = next((a for a in arrivals if a["arrived_at"] > cut and a["route"] != "primary"), None)
        out["failover_s"] = round(first["arrived_at"] - cut, 3) if first else None
        out["failover_route"] = first["route"] if first else None
        out["failover_file"] = first["name"] if first else None
        during = [a for a in arrivals if cut <= a["closed_at"] <= (restored or math.inf)]
        out["files_during_outage"] = len(during)
        out["routes_during_outage"] = dict(Counter(a["route"] for a in during))
    if restored is not None:
        back = next((a for a in arrivals if a["closed_at"] > restored and a["route"] == "primary"), None)
        out["failback_s"] = round(back["arrived_at"] - restored, 3) if back else None
        out["failback_file"] = back["name"] if back else None
    return out


def check_drill(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """The link cut made new files take the direct route; after the restore they took primary again."""
    figures = drill_figures(observed)
    problems = []
    if figures.get("cut_at") is None:
        problems.append("the link was never cut")
    elif figures.get("failover_s") is None:
        problems.append("no file was archived by another route after the cut")
    if figures.get("restored_at") is None:
        problems.append("the link was never restored")
    elif figures.get("failback_s") is None:
        problems.append("no file was archived by primary after the restore")
    if figures.get("broker_killed_at") is None:
        problems.append("the base broker was never killed")
    return Check(
        "network drill",
        not problems,
        f"failover in {figures.get('failover_s')} s via {figures.get('failover_route')}, failback in "
        f"{figures.get('failback_s')} s; {figures.get('files_during_outage', 0)} files closed during the outage",
        problems,
    )


def check_daemons(truth: dict[str, Any], observed: dict[str, Any]) -> Check:
    """No daemon died during the rehearsal (only the broker the drill killed restarted)."""
    problems = [
        f"{site}: {'not running' if not d['alive'] else ''} {d['restarts']} restart(s)".strip()
        for site, d in observed.get("daemons", {}).items()
        if not d["alive"] or d["restarts"]
    ]
    if not observed.get("daemons"):
        problems.append("daemon states unknown")
    return Check("daemons", not problems, "summit, base and archive ran throughout", problems)


CHECKS: tuple[Callable[[dict[str, Any], dict[str, Any]], Check], ...] = (
    check_quarantine,
    check_completeness,
    check_masters,
    check_calexps,
    check_diffs,
    check_drill,
    check_daemons,
)


def run_checks(truth: dict[str, Any], observed: dict[str, Any], *, rehash: bool = True) -> dict[str, Any]:
    """The verdict: every check, whether all passed, and the figures the report shows."""
    matches = match_alerts(truth, observed)
    checks = [check_files(truth, observed, rehash=rehash)]
    checks += [fn(truth, observed) for fn in CHECKS]
    checks.insert(6, check_alerts(truth, observed, matches))
    return {
        "ok": all(c.ok for c in checks),
        "checks": [asdict(c) for c in checks],
        "matches": matches,
        "completeness_by_snr": completeness_by_snr(matches),
        "drill": drill_figures(observed),
    }
