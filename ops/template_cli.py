"""The operator command of templates: ``skyrelay template build --field F --band B``.

It asks the archive (``POST /v1/templates``, logged in as the operator) to stack the best-seeing calexps
of one field and band into a template per detector, and waits for them to be built.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from typing import Any

from ops import output
from ops.output import Exit
from ops.target import resolve, target_options

WAIT_S = 660.0
"""The archive answers within 600 s (what is still running then is said so); a little more here."""


def add_template_commands(subparsers: Any) -> None:
    """Add ``skyrelay template build --field F --band B [--min-visits N] [--max-visits N] [--json]``.

    Args:
        subparsers: ``skyrelay``'s sub-command parsers (from ``add_subparsers``).
    """
    template = subparsers.add_parser("template", help="templates: stacks of a field's best-seeing visits")
    actions = template.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "build",
        help="stack the best-seeing calexps of a field and band into a template per detector",
        parents=[output.json_option(), target_options()],
    )
    p.add_argument("--field", required=True, help="the field (the raws' OBJECT)")
    p.add_argument("--band", required=True, help="the band (FILTER up to its first underscore)")
    p.add_argument("--min-visits", type=int, default=3, help="refuse a detector with fewer usable visits (>= 3)")
    p.add_argument("--max-visits", type=int, default=8, help="stack at most this many, best seeing first")
    p.set_defaults(func=cmd_template_build)


def cmd_template_build(args: argparse.Namespace) -> int:
    """Build templates at the archive; exit 0 when every detector got one, 4 when the archive refused, 1 when
    a detector's template failed."""
    target = resolve(args)
    url = f"{target.http[target.archive]}/v1/templates"
    body = {"field": args.field, "band": args.band, "min_visits": args.min_visits, "max_visits": args.max_visits}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with output.progress(f"building templates of {args.field} {args.band}"):
        result = target.request_json(request, timeout_s=WAIT_S)
    templates = result["templates"]
    if args.json:
        output.emit_json(result)
    else:
        rows = []
        for t in templates:
            product = t.get("product") or {}
            prov = product.get("provenance", {})
            fwhm = prov.get("seeing", {}).get("fwhm_arcsec")
            inputs = prov.get("inputs", [])
            rows.append(
                (
                    t["instrument"],
                    t["detector"],
                    output.state(t["state"] in ("built", "existing"), t["state"], t["state"]),
                    len(inputs) or "-",
                    f"{fwhm:.2f}" if isinstance(fwhm, float) else "-",
                    product.get("product_id") or t.get("reason") or "",
                    ", ".join(f'{item["name"]} ({item["fwhm_arcsec"]:.2f}")' for item in inputs) or "-",
                )
            )
        output.table(
            ["instrument", "detector", "state", "inputs", "fwhm", "template / reason", "visits stacked"],
            rows,
            right=["inputs", "fwhm"],
        )
    return Exit.OK if all(t["state"] in ("built", "existing") for t in templates) else Exit.FAILED
