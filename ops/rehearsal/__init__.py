"""``skyrelay rehearse``: an observatory's operations rehearsal replayed on one machine, checked and reported.

Days of afternoon calibrations and nights of science quads (:mod:`ops.rehearsal.plan`), written by a camera
that keeps the truth of everything (:mod:`ops.rehearsal.camera`), through a real drill cluster with the
network drill on the last night (:mod:`ops.rehearsal.run`), checked against the truth
(:mod:`ops.rehearsal.checks`) and reported in one self-contained ``W/report.html``
(:mod:`ops.rehearsal.report`). Exit 0 only when the verdict is all good.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_USAGE = 2


def add_rehearse_commands(sub: Any) -> None:
    """Register ``skyrelay rehearse`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "rehearse",
        help="replay an operations rehearsal (calibration days, science nights, a network drill) and report it",
        description="Run days of calibrations and nights of science through a real one-machine drill cluster, "
        "check everything the archive holds against the truth of what was written, and write WORKDIR/report.html. "
        "Exit status: 0 the verdict is all good; 1 something is missing or wrong (the report says what); "
        "2 the rehearsal could not run.",
    )
    p.add_argument("--workdir", default="skyrelay-rehearsal", help="a new directory for the cluster, truth and report")
    p.add_argument("--days", type=int, default=4, help="days of the plan, 1-4 (the last one has the network drill)")
    p.add_argument(
        "--scale",
        choices=["small", "full"],
        default="small",
        help="small: 256x256 px detectors (minutes); full: 4k x 4k detectors (hours on a small machine)",
    )
    p.add_argument("--fields", type=int, default=None, help="fields per night (default 2 at small scale)")
    p.add_argument("--seed", type=int, default=0, help="seed of every simulated frame")
    p.add_argument("--json", action="store_true", help="print the verdict and figures as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--recheck",
        action="store_true",
        help="check an earlier rehearsal's WORKDIR again (re-hashing the archived files) and rewrite its report",
    )
    p.set_defaults(func=rehearse_main)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 3)


def figures(truth: dict[str, Any], observed: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a rehearsal."""
    arrivals = [n["message"] for n in observed["notices"] if n["message"].get("type") == "arrival"]
    latencies = [float(a["latency_s"]) for a in arrivals]
    kinds: dict[str, int] = {}
    for n in observed["notices"]:
        if n["topic"].startswith("skyrelay/v1/products/"):
            kind = str(n["message"].get("kind"))
            kinds[kind] = kinds.get(kind, 0) + 1
    complete = sum(1 for e in truth["exposures"].values() if set(e["written"]) >= set(e["expected"]))
    matches = verdict["matches"]
    return {
        "files_written": len(truth["files"]),
        "files_archived": sum(1 for r in observed["catalog"] if r["status"] == "archived"),
        "bytes_written": sum(int(f["size"]) for f in truth["files"].values()),
        "latency_s": {
            "p50": _percentile(latencies, 50),
            "p90": _percentile(latencies, 90),
            "p99": _percentile(latencies, 99),
            "max": round(max(latencies), 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
        "failover_s": verdict["drill"].get("failover_s"),
        "failback_s": verdict["drill"].get("failback_s"),
        "exposures": len(truth["exposures"]),
        "exposures_complete": complete,
        "products": kinds,
        "alerts": len(observed["alerts"]),
        "injections": len(matches),
        "injections_recovered": sum(m["alert_id"] is not None for m in matches),
        "wall_s": round(float(truth.get("finished_at", time.time())) - float(truth.get("started_at", time.time())), 1),
    }


def _select_cutouts(observed: dict[str, Any], matches: list[dict[str, Any]], n: int = 6) -> None:
    """Keep the cutouts of a few recovered alerts (spread over SNR) in the record; drop the rest."""
    recovered = sorted((m for m in matches if m["alert_id"] is not None), key=lambda m: m["snr"])
    chosen: list[str] = []
    if recovered:
        step = max(1, len(recovered) // n)
        chosen = [str(m["alert_id"]) for m in recovered[::step][:n]]
    observed["cutouts"] = {k: v for k, v in observed.get("cutouts", {}).items() if k in chosen}


def _summary_text(verdict: dict[str, Any], numbers: dict[str, Any], report: Path) -> str:
    lines = [f"rehearsal: {'ALL GOOD' if verdict['ok'] else 'NOT OK'}  (report: {report})"]
    for check in verdict["checks"]:
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']:14} {check['summary']}")
        lines += [f"         - {p}" for p in check["problems"][:10]]
        lines += [f"         note: {w}" for w in check.get("warnings", [])[:5]]
    lat = numbers["latency_s"]
    lines.append(
        f"  files {numbers['files_archived']}/{numbers['files_written']}, latency p50 {lat['p50']} s "
        f"p90 {lat['p90']} s "
        f"p99 {lat['p99']} s max {lat['max']} s; failover {numbers['failover_s']} s, failback {numbers['failback_s']} s"
    )
    lines.append(
        f"  exposures {numbers['exposures_complete']}/{numbers['exposures']} complete as written; products "
        + ", ".join(f"{k} {v}" for k, v in sorted(numbers["products"].items()))
        + f"; alerts {numbers['alerts']}, injections recovered {numbers['injections_recovered']}/"
        f"{numbers['injections']}; wall {numbers['wall_s']} s"
    )
    return "\n".join(lines)


def finish(
    workdir: Path, truth: dict[str, Any], observed: dict[str, Any], *, rehash: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check, write ``verdict.json`` and ``report.html``; (verdict, figures)."""
    from ops.rehearsal.checks import run_checks
    from ops.rehearsal.report import write_report

    verdict = run_checks(truth, observed, rehash=rehash)
    numbers = figures(truth, observed, verdict)
    (workdir / "verdict.json").write_text(json.dumps({"verdict": verdict, "figures": numbers}, indent=1, default=str))
    write_report(workdir / "report.html", truth, observed, verdict, numbers)
    return verdict, numbers


def rehearse_main(args: argparse.Namespace) -> int:
    """``skyrelay rehearse``: run (or ``--recheck``) a rehearsal; exit 0 only when the verdict is all good."""
    workdir = Path(args.workdir).resolve()
    if args.recheck:
        try:
            truth = json.loads((workdir / "truth.json").read_text())
            observed = json.loads((workdir / "observed.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"skyrelay rehearse: no earlier rehearsal in {workdir}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        verdict, numbers = finish(workdir, truth, observed)
        return _print(args, verdict, numbers, workdir)

    from ops.rehearsal.plan import make_plan
    from ops.rehearsal.run import Progress, Rehearsal

    try:
        plan = make_plan(days=args.days, scale=args.scale, seed=args.seed, fields=args.fields)
    except ValueError as exc:
        print(f"skyrelay rehearse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if (workdir / "truth.json").exists() or (workdir / "cluster").exists():
        print(
            f"skyrelay rehearse: {workdir} already holds a rehearsal; give a new --workdir (or --recheck it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    workdir.mkdir(parents=True, exist_ok=True)
    rehearsal = Rehearsal(workdir, plan, Progress(enabled=not args.quiet))
    try:
        asyncio.run(rehearsal.run())
    except Exception as exc:  # the cluster did not start, a broker is missing: say so, keep what was recorded
        print(f"skyrelay rehearse: the rehearsal could not run: {exc!r}", file=sys.stderr)
        (workdir / "truth.json").write_text(json.dumps(rehearsal.truth, indent=1))
        return EXIT_USAGE
    truth = rehearsal.truth
    observed = rehearsal.observed()
    from ops.rehearsal.checks import match_alerts

    _select_cutouts(observed, match_alerts(truth, observed))
    (workdir / "truth.json").write_text(json.dumps(truth, indent=1))
    (workdir / "observed.json").write_text(json.dumps(observed, indent=1, default=str))
    rehearsal.progress.say("checking against the truth and writing the report")
    verdict, numbers = finish(workdir, truth, observed)
    return _print(args, verdict, numbers, workdir)


def _print(args: argparse.Namespace, verdict: dict[str, Any], numbers: dict[str, Any], workdir: Path) -> int:
    report = workdir / "report.html"
    text = (
        json.dumps(
            {
                "ok": verdict["ok"],
                "checks": verdict["checks"],
                "figures": numbers,
                "completeness_by_snr": verdict["completeness_by_snr"],
                "report": str(report),
            },
            indent=2,
        )
        if args.json
        else _summary_text(verdict, numbers, report)
    )
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `skyrelay rehearse | head`: the reader left; the exit status still tells
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if verdict["ok"] else EXIT_VERDICT
