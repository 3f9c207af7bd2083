"""The operator commands of the processing: `products list|show|reprocess`, `simulate calibs`, `simulate night`.

The products commands reach the archive's ``/v1/products`` API, logged in as the operator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import urllib.request
from pathlib import Path
from typing import Any

from ops import output
from ops.output import CliError, Exit
from ops.target import Target, resolve, target_options

KINDS = ("bias", "dark", "flat", "calexp", "diff", "alerts", "template")


def add_products_commands(subparsers: Any) -> None:
    """Add ``skyrelay products list [--kind K] [--json]``, ``products show ID`` and ``products reprocess ID``.

    Args:
        subparsers: ``skyrelay``'s sub-command parsers (from ``add_subparsers``).
    """
    common = [output.json_option(), target_options()]
    products = subparsers.add_parser("products", help="the archive's products: list, show, reprocess")
    actions = products.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="products, newest first", parents=common)
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.set_defaults(func=cmd_products_list)
    p = actions.add_parser(
        "show", help="one product: inputs with checksums, parameters, statistics, frames left out", parents=common
    )
    p.add_argument("product_id", help="the product's id (from products list)")
    p.set_defaults(func=cmd_products_show)
    p = actions.add_parser(
        "reprocess",
        help="rebuild a product from its provenance; exit 0 when the checksum equals the recorded one, 1 if not",
        parents=common,
    )
    p.add_argument("product_id", help="the product's id (from products list)")
    p.set_defaults(func=cmd_products_reprocess)


def _request(target: Target, request: urllib.request.Request, timeout_s: float) -> Any:
    return target.request_json(request, timeout_s=timeout_s)


def _archive(args: argparse.Namespace) -> tuple[Target, str]:
    target = resolve(args)
    return target, target.http[target.archive]


def cmd_products_list(args: argparse.Namespace) -> int:
    """Print the archive's products (a table, or JSON)."""
    target, http = _archive(args)
    url = f"{http}/v1/products" + (f"?kind={args.kind}" if args.kind else "")
    rows = _request(target, urllib.request.Request(url), 30)
    if args.json:
        output.emit_json(rows)
        return 0
    output.table(
        ["product", "kind", "instrument", "detector", "filter", "frames", "created (UTC)"],
        [
            (
                row["product_id"],
                row["kind"],
                row["instrument"],
                row["detector"],
                row["filter"] or "",
                row["frames_used"],
                datetime.datetime.fromtimestamp(row["created_at"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            )
            for row in rows
        ],
        right=["frames"],
    )
    output.say(f"{len(rows)} product(s)")
    return 0


def cmd_products_show(args: argparse.Namespace) -> int:
    """Print one product with its provenance."""
    target, http = _archive(args)
    product = _request(target, urllib.request.Request(f"{http}/v1/products/{args.product_id}"), 30)
    if args.json:
        output.emit_json(product)
        return 0
    prov = product["provenance"]
    print(f"product   {product['product_id']} ({product['kind']}, {product['instrument']} {product['detector']})")
    print(f"file      {product['archive_path']}")
    print(f"checksum  {product['checksum']}")
    print(f"code      {prov['code_version']}   executor {prov.get('executor')}   job {prov['job_key'][:16]}")
    for kind in ("bias", "dark"):
        if prov.get(kind):
            print(f"{kind:9} {prov[kind]['product_id']} {prov[kind]['checksum']}")
    for note in prov.get("notes", []):
        print(f"note      {note}")
    reasons = {item["name"]: item["reason"] for item in prov.get("left_out", [])}
    print(f"inputs    {len(prov['inputs'])}, used {len(prov['inputs']) - len(reasons)}")
    for item in prov["inputs"]:
        mark = f"LEFT OUT: {reasons[item['name']]}" if item["name"] in reasons else "used"
        print(f"  {item['name']:40} {item['checksum']}  {mark}")
    print("parameters " + json.dumps(prov.get("params"), sort_keys=True))
    stats = prov.get("stats") or prov.get("quality") or {}
    if "amps" not in stats:  # a science product: its figures as they are
        print("statistics " + json.dumps(stats, sort_keys=True))
        for note in prov.get("warnings", []):
            print(f"warning   {note}")
        return 0
    print(f"statistics frames_used {stats['frames_used']}  mean {stats['mean']}  stdev {stats['stdev']}")
    for amp, values in stats["amps"].items():
        shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"  {amp:10} " + "  ".join(shown))
    for warning in prov.get("warnings", []):
        print(f"warning   {warning}")
    return 0


def cmd_products_reprocess(args: argparse.Namespace) -> int:
    """Rebuild a product at the archive; exit 0 when the rebuild is byte-identical, 1 when it differs."""
    target, http = _archive(args)
    request = urllib.request.Request(f"{http}/v1/products/{args.product_id}/reprocess", method="POST")
    result = _request(target, request, 600)
    if args.json:
        output.emit_json(result)
    else:
        verdict = "SAME: the rebuild is byte-identical" if result["same"] else "DIFFERENT: the rebuild differs"
        print(f"{result['product_id']}: recorded {result['recorded_checksum']}")
        print(f"{'':{len(result['product_id'])}}  rebuilt  {result['checksum']}")
        print(verdict)
    return Exit.OK if result["same"] else Exit.FAILED


def add_simulate_calibs(simulate_subparsers: Any) -> None:
    """Add ``skyrelay simulate calibs`` (a day of bias, dark and flat frames into a cluster's summit inbox).

    Args:
        simulate_subparsers: the ``simulate`` command's sub-command parsers.
    """
    p = simulate_subparsers.add_parser(
        "calibs", help="write bias, dark and flat sequences into the summit inbox", parents=[output.json_option()]
    )
    p.add_argument("--workdir", type=Path, required=True, help="a `skyrelay up` cluster (its summit inbox)")
    p.add_argument("--instrument", default="ComCam", help="instrument name in the headers")
    p.add_argument("--detector", default="R22_S11", help="detector name in the headers")
    p.add_argument("--dayobs", default=None, help="YYYYMMDD (default today, UTC)")
    p.add_argument("--bias", type=int, default=0, metavar="N", help="bias frames")
    p.add_argument("--dark", type=int, default=0, metavar="N", help="dark frames")
    p.add_argument("--flat", type=int, default=0, metavar="N", help="flat frames")
    p.add_argument("--lamp-change-at", type=int, default=None, metavar="K", help="flats from CURINDEX K on")
    p.add_argument("--lamp-factor", type=float, default=1.0, metavar="F", help="lamp level after the change")
    p.add_argument("--interrupt-at", type=int, default=None, metavar="K", help="stop the flats after frame K-1")
    p.add_argument("--seq-start", type=int, default=1, help="first SEQNUM")
    p.add_argument(
        "--small",
        action="store_true",
        help="the small test detector of `simulate night --small` (256 x 256 px: 2 x 4 amplifiers of 64 x 128)",
    )
    p.add_argument("--compress", action="store_true", help="Rice tile-compressed amplifiers, as real raws are")
    p.set_defaults(func=cmd_simulate_calibs)


def cmd_simulate_calibs(args: argparse.Namespace) -> int:
    """Write the sequences into the summit inbox (their ``*.truth.json`` beside them; the watcher ignores those)."""
    from ops.camera import CameraError, _inbox_from_workdir
    from ops.simulate.calibs import write_calib_day
    from ops.simulate.night import SCIENCE_SMALL

    try:
        inbox = _inbox_from_workdir(args.workdir)
    except CameraError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    dayobs = args.dayobs or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    truths = write_calib_day(
        inbox,
        instrument=args.instrument,
        detector=args.detector,
        dayobs=dayobs,
        bias=args.bias,
        dark=args.dark,
        flat=args.flat,
        seq_start=args.seq_start,
        lamp_change_at=args.lamp_change_at,
        lamp_factor=args.lamp_factor,
        interrupt_at=args.interrupt_at,
        spec=SCIENCE_SMALL if args.small else None,
        compress=args.compress,
    )
    if args.json:
        output.emit_json([{"kind": t.kind, "groupid": t.groupid, "files": [str(p) for p in t.paths]} for t in truths])
        return 0
    for truth in truths:
        output.say(f"{truth.kind:5} {truth.groupid}: {len(truth.paths)} frame(s) into {inbox}")
    return 0


def add_simulate_night(simulate_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``skyrelay simulate night`` to the ``simulate`` subcommands."""
    p = simulate_subparsers.add_parser(
        "night", help="write science quads of one detector into the summit inbox", parents=[output.json_option()]
    )
    p.add_argument("--workdir", type=Path, required=True, help="a `skyrelay up` cluster (its summit inbox)")
    p.add_argument("--fields", type=int, default=1, help="fields, one quad each")
    p.add_argument("--instrument", default="ComCam", help="instrument name in the headers")
    p.add_argument("--detector", default="R22_S11", help="detector name in the headers")
    p.add_argument("--dayobs", default=None, help="YYYYMMDD (today, UTC, by default)")
    p.add_argument("--seq-start", type=int, default=100, help="first SEQNUM")
    p.add_argument("--lose", action="append", default=[], help="a visit never written: v3, or F01:v3")
    p.add_argument("--bad-seeing", action="append", default=[], help="a visit in 2.4 arcsec seeing: v2, or F01:v2")
    p.add_argument("--snr", type=float, default=20.0, help="difference SNR of each field's transient")
    p.add_argument("--small", action="store_true", help="small science detectors (256 x 256 px)")
    p.set_defaults(func=cmd_simulate_night)


def cmd_simulate_night(args: argparse.Namespace) -> int:
    """Write the night into the cluster's summit inbox."""
    import datetime

    from ops.camera import CameraError, _inbox_from_workdir

    try:
        inbox = _inbox_from_workdir(args.workdir)
    except CameraError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    dayobs = args.dayobs or datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    from ops.simulate.night import write_night

    visits = write_night(
        inbox,
        instrument=args.instrument,
        detector=args.detector,
        dayobs=dayobs,
        fields=args.fields,
        lose=args.lose,
        bad_seeing=args.bad_seeing,
        small=args.small,
        seq_start=args.seq_start,
        transient_snr=args.snr,
    )
    if args.json:
        output.emit_json(
            [{"obsid": v.obsid, "group_id": v.group_id, "curindex": v.curindex, "file": str(v.path)} for v in visits]
        )
        return 0
    for v in visits:
        output.say(f"{v.obsid} {v.group_id} v{v.curindex}: {v.path.name}")
    return 0
