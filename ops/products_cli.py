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


def _utc(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_products_show(args: argparse.Namespace) -> int:
    """Print one product with its provenance: what it is, what it was made from and how, its statistics."""
    target, http = _archive(args)
    product = _request(target, urllib.request.Request(f"{http}/v1/products/{args.product_id}"), 30)
    if args.json:
        output.emit_json(product)
        return Exit.OK
    show_product(product)
    return Exit.OK


def show_product(product: dict[str, Any]) -> None:
    """The text form of ``products show``: one table per part, in the CLI's conventions (see ops/output.py)."""
    prov = product["provenance"]
    expired = product.get("expired")
    fields: list[tuple[str, object]] = [
        ("kind", f"{product['kind']}, {product['instrument']} {product['detector']}"),
        ("filter", product.get("filter") or ""),
        ("created (UTC)", _utc(product.get("created_at"))),
        ("file", product["archive_path"]),
        ("checksum", product["checksum"]),
        ("code", prov.get("code_version") or ""),
        ("executor", prov.get("executor") or ""),
        ("job", str(prov.get("job_key") or "")[:16]),
    ]
    if expired:
        fields.append(
            (
                "expired",
                output.styled(f"file deleted {_utc(expired.get('at'))} UTC (row and provenance stay)", "yellow"),
            )
        )
    fields += [
        (kind, f"{prov[kind]['product_id']} {prov[kind]['checksum']}") for kind in ("bias", "dark") if prov.get(kind)
    ]
    fields += [("note", note) for note in prov.get("notes", [])]
    fields.append(("parameters", json.dumps(prov.get("params"), sort_keys=True)))
    output.table(["field", "value"], fields, title=f"product {product['product_id']}")

    reasons = {item["name"]: item["reason"] for item in prov.get("left_out", [])}
    inputs = prov.get("inputs", [])
    output.say()
    output.table(
        ["input", "checksum", "used"],
        [
            (
                item["name"],
                item["checksum"],
                output.styled(f"LEFT OUT: {reasons[item['name']]}", "bold red") if item["name"] in reasons else "used",
            )
            for item in inputs
        ],
        title=f"inputs: {len(inputs)}, used {len(inputs) - len(reasons)}",
    )

    stats = prov.get("stats") or prov.get("quality") or {}
    if "amps" not in stats:  # a science product (calexp, diff, template, alerts): its figures as they are
        output.say()
        output.table(["figure", "value"], [(k, json.dumps(v)) for k, v in sorted(stats.items())], title="statistics")
        for note in prov.get("warnings", []):
            output.say(f"warning: {note}", "yellow")
        return
    amps: dict[str, dict[str, object]] = stats.get("amps", {})
    keys = list(dict.fromkeys(k for values in amps.values() for k in values))
    output.say()
    output.table(
        ["amplifier", *keys],
        [
            (amp, *(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v) for v in map(values.get, keys)))
            for amp, values in amps.items()
        ],
        title=f"statistics: frames used {stats['frames_used']}, mean {stats['mean']}, stdev {stats['stdev']}",
        right=keys,
    )
    for warning in prov.get("warnings", []):
        output.say(f"warning: {warning}", "yellow")


def cmd_products_reprocess(args: argparse.Namespace) -> int:
    """Rebuild a product at the archive; exit 0 when the rebuild is byte-identical, 1 when it differs."""
    target, http = _archive(args)
    request = urllib.request.Request(f"{http}/v1/products/{args.product_id}/reprocess", method="POST")
    with output.progress(f"rebuilding {args.product_id} at the archive"):
        result = _request(target, request, 600)
    if args.json:
        output.emit_json(result)
    else:
        output.table(
            ["product", "recorded checksum", "rebuilt checksum", "verdict"],
            [
                (
                    result["product_id"],
                    result["recorded_checksum"],
                    result["checksum"],
                    output.state(result["same"], "SAME: byte-identical", "DIFFERENT: the rebuild differs"),
                )
            ],
        )
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
