"""The operator command of templates: ``skyrelay template build --field F --band B``.

It asks the archive (``POST /v1/templates``, logged in as the operator) to stack the best-seeing calexps
of one field and band into a template per detector, and waits for them to be built.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from ops.target import add_target_arguments, resolve

WAIT_S = 660.0
"""The archive answers within 600 s (what is still running then is said so); a little more here."""


def add_template_commands(subparsers: Any) -> None:
    """Add ``skyrelay template build --field F --band B [--min-visits N] [--max-visits N] [--json]``.

    Args:
        subparsers: ``skyrelay``'s sub-command parsers (from ``add_subparsers``).
    """
    template = subparsers.add_parser("template", help="templates: stacks of a field's best-seeing visits")
    actions = template.add_subparsers(dest="action", required=True)
    p = actions.add_parser(
        "build", help="stack the best-seeing calexps of a field and band into a template per detector"
    )
    p.add_argument("--field", required=True, help="the field (the raws' OBJECT)")
    p.add_argument("--band", required=True, help="the band (FILTER up to its first underscore)")
    p.add_argument("--min-visits", type=int, default=3, help="refuse a detector with fewer usable visits (>= 3)")
    p.add_argument("--max-visits", type=int, default=8, help="stack at most this many, best seeing first")
    p.add_argument("--json", action="store_true")
    add_target_arguments(p)
    p.set_defaults(func=cmd_template_build)


def cmd_template_build(args: argparse.Namespace) -> int:
    """Build templates at the archive; exit 0 when every detector got one, 1 otherwise (refused, failed)."""
    target = resolve(args)
    url = f"{target.http[target.archive]}/v1/templates"
    body = {"field": args.field, "band": args.band, "min_visits": args.min_visits, "max_visits": args.max_visits}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with target.urlopen(request, timeout_s=WAIT_S) as resp:
            result = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")[:2000]
        print(f"skyrelay template build: the archive refused ({exc.code}): {text}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"skyrelay template build: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    templates = result["templates"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'instrument':10} {'detector':9} {'state':8} {'inputs':>6} {'fwhm':>6}  template / reason")
        for t in templates:
            product = t.get("product") or {}
            prov = product.get("provenance", {})
            fwhm = prov.get("seeing", {}).get("fwhm_arcsec")
            shown = f"{fwhm:.2f}" if isinstance(fwhm, float) else "-"
            what = product.get("product_id") or t.get("reason") or ""
            n = len(prov.get("inputs", [])) or "-"
            print(f"{t['instrument']:10} {t['detector']:9} {t['state']:8} {n!s:>6} {shown:>6}  {what}")
            for item in prov.get("inputs", []):
                print(f'{"":36} {item["name"]} {item["product_id"]} fwhm {item["fwhm_arcsec"]:.2f}"')
    return 0 if all(t["state"] in ("built", "existing") for t in templates) else 1
