"""The command line of ``skyrelay bench``: its options, their ``--quick`` defaults, and the entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ops.bench.config import MB, WORKLOADS, BenchConfig
from ops.bench.errors import BenchError
from ops.bench.report import render_table
from ops.bench.run import run_bench

__all__ = ["add_bench_arguments", "bench_main", "config_from_args"]


def _workloads_argument(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {', '.join(unknown)}; choose from {','.join(WORKLOADS)}")
    return chosen


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``skyrelay bench`` to ``parser``.

    Args:
        parser: The sub-command's parser.
    """
    parser.add_argument(
        "suite",
        nargs="?",
        default="transfer",
        choices=("transfer", "processing", "science"),
        help="transfer (default: throughput, latency, CPU and memory beside rsync and dd), processing (master "
        "bias and flat beside ccdproc.combine, then difference imaging on arrival: latency per stage on one core, "
        "detectors per minute with the process pool and Dask) or science (that second part alone)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the run directory; use the disk you want to measure (default: the system temp dir)",
    )
    parser.add_argument("--files", type=_positive_int, default=None, help="files per exposure (default 197; quick 40)")
    parser.add_argument("--size-mb", type=_positive_float, default=None, help="MB per file (default 20; quick 5)")
    parser.add_argument(
        "--idle-files", type=_positive_int, default=None, help="idle-latency files (default 20; quick 5)"
    )
    parser.add_argument("--small-files", type=_positive_int, default=None, help="small files (default 500; quick 200)")
    parser.add_argument(
        "--backlog-files",
        type=_positive_int,
        default=None,
        help="files registered while the archive is down, then drained (default 20000; quick 60)",
    )
    parser.add_argument("--small-kb", type=_positive_float, default=100.0, help="KB per small file (default 100)")
    parser.add_argument(
        "--idle-window-s", type=_positive_float, default=None, help="idle CPU window in seconds (default 10; quick 3)"
    )
    parser.add_argument(
        "--workloads",
        type=_workloads_argument,
        default=WORKLOADS,
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout (table on stderr)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (files, cluster logs)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve the options (``--quick`` changes the defaults, explicit options still win)."""
    quick = bool(args.quick)

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    return BenchConfig(
        parent=(args.workdir or Path(tempfile.gettempdir())).resolve(),
        files=int(pick(args.files, 197, 40)),
        size_bytes=int(float(pick(args.size_mb, 20.0, 5.0)) * MB),
        idle_files=int(pick(args.idle_files, 20, 5)),
        small_files=int(pick(args.small_files, 500, 200)),
        small_size_bytes=int(args.small_kb * 1000),
        backlog_files=int(pick(args.backlog_files, 20_000, 60)),
        idle_window_s=float(pick(args.idle_window_s, 10.0, 3.0)),
        workloads=tuple(args.workloads),
        keep=bool(args.keep),
        quick=quick,
    )


def bench_main(args: argparse.Namespace) -> int:
    """Run ``skyrelay bench`` and print its report.

    Args:
        args: Parsed options from :func:`add_bench_arguments`.

    Returns:
        0 when every selected workload and baseline ran (whatever the targets say), 1 when one failed,
        2 when the run could not start.
    """
    if args.suite in ("processing", "science"):
        return _processing_main(args)
    config = config_from_args(args)
    from ops import output

    try:
        with output.progress("bench: starting") as step:
            report = asyncio.run(run_bench(config, on_step=lambda name: step(0, description=f"bench: {name}")))
    except (BenchError, OSError) as exc:
        raise output.CliError(str(exc), output.Exit.USAGE) from None
    encoded = json.dumps(report, indent=2) + "\n"
    if args.json_out is not None:
        args.json_out.write_text(encoded)
    table = render_table(report)
    if args.json:
        sys.stdout.write(encoded)
        print(table, file=sys.stderr)
    else:
        print(table)
    return output.Exit.FAILED if report["errors"] else output.Exit.OK


def _processing_main(args: argparse.Namespace) -> int:
    """``skyrelay bench processing``: masters beside ccdproc, then difference imaging on arrival (latency per
    stage on one core, detectors per minute with the process pool and Dask); 4k x 4k frames, small with --quick."""
    from ops.bench.processing import run_processing_bench
    from ops.bench.science import run_science_bench

    parent = args.workdir or Path(tempfile.gettempdir())
    workdir = parent / "skyrelay-bench-processing"
    frames = {"bias_frames": 5, "flat_frames": 5} if args.quick else {"bias_frames": 20, "flat_frames": 10}
    report: dict[str, Any] = {"table": ""}
    if args.suite == "processing":
        report = run_processing_bench(workdir, full_size=not args.quick, **frames)
    science = run_science_bench(workdir / "science", full_size=not args.quick)
    tables = f"{report['table']}\n\n{science['table']}".strip()
    if args.json:
        encoded = {k: v for k, v in report.items() if k != "table"}
        encoded["science"] = {k: v for k, v in science.items() if k != "table"}
        sys.stdout.write(json.dumps(encoded, indent=2, default=str) + "\n")
        print(tables, file=sys.stderr)
    else:
        print(tables)
    return 0
