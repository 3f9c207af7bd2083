"""``skyrelay alerts show ID``: an alert from the archive's notice log, and its three cutouts as PNG."""

from __future__ import annotations

import argparse
import contextlib
import io
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from daemon.journal.science import alert_payload
from ops import output
from ops.output import CliError, Exit
from ops.target import target_options, workdir_of
from protocol import ProtocolError, decode
from protocol.alerts import AlertNotice

CUTOUTS = (("science", "cutoutScience"), ("template", "cutoutTemplate"), ("difference", "cutoutDifference"))


def add_alerts_commands(subparsers: Any) -> None:
    """Add ``skyrelay alerts show``."""
    alerts = subparsers.add_parser("alerts", help="difference-image alerts").add_subparsers(
        dest="verb", required=True, metavar="ACTION"
    )
    p = alerts.add_parser(
        "show",
        help="print an alert (a table, or with --json the packet without cutouts) and write its cutouts as PNG; "
        "exit 5 when there is no such alert",
        parents=[output.json_option(), target_options()],
    )
    p.add_argument("alert_id", type=int, help="alertId (= diaSourceId)")
    p.add_argument("--out", type=Path, required=True, help="directory for <ID>_{science,template,difference}.png")
    p.set_defaults(func=cmd_alerts_show)


def _archive_journal(args: argparse.Namespace) -> Path:
    """The archive's journal: under ``--topology``'s archive state_dir, or a ``skyrelay up`` cluster's."""
    if getattr(args, "topology", None):
        from daemon.config import load_topology
        from daemon.errors import TopologyError

        try:
            topology = load_topology(args.topology, check_dirs=False)
        except TopologyError as exc:
            raise CliError(str(exc), Exit.USAGE) from None
        return topology.archive.state_dir / "journal.sqlite"
    return workdir_of(args) / "archive" / "state" / "journal.sqlite"


def find_alert(workdir: Path, alert_id: int, *, journal: Path | None = None) -> AlertNotice | None:
    """The alert's notice from the archive's journal (read only), or None when there is no such alert."""
    path = journal or workdir / "archive" / "state" / "journal.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no archive journal at {path}")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        payload = alert_payload(db, alert_id)
    if payload is None:
        return None
    message = decode(payload, AlertNotice)
    assert isinstance(message, AlertNotice)
    return message


def write_cutout_pngs(notice: AlertNotice, out: Path) -> list[Path]:
    """The science, template and difference cutouts as PNG (matplotlib, Agg), the source's position marked."""
    import base64

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, field in CUTOUTS:
        with fits.open(io.BytesIO(base64.b64decode(notice.alert[field]))) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
        finite = data[np.isfinite(data)]
        low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
        figure, axes = plt.subplots(figsize=(3, 3), dpi=100)
        axes.imshow(data, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
        axes.set_title(f"{label} {notice.alert_id}", fontsize=7)
        axes.set_axis_off()
        path = out / f"{notice.alert_id}_{label}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written


def cmd_alerts_show(args: argparse.Namespace) -> int:
    """Print the alert (without its cutouts) as JSON and write the three PNG files."""
    journal = _archive_journal(args)
    try:
        notice = find_alert(journal.parent, args.alert_id, journal=journal)
    except (FileNotFoundError, sqlite3.Error, ProtocolError) as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    if notice is None:
        raise CliError(f"no alert {args.alert_id} in the archive's notice log", Exit.NO_DATA)
    paths = write_cutout_pngs(notice, args.out)
    summary = {key: value for key, value in notice.alert.items() if not key.startswith("cutout")}
    if args.json:
        output.emit_json(
            {
                "alert": summary,
                "visits": list(notice.visits),
                "position": notice.position,
                "pngs": [str(p) for p in paths],
            }
        )
        return Exit.OK
    source = summary.get("diaSource") or {}
    rows: list[tuple[str, object]] = [
        ("alert", notice.alert_id),
        ("instrument", f"{notice.instrument} {notice.detector}"),
        ("visits", " - ".join(notice.visits) + "  (science - reference)"),
        ("difference", notice.diff_product_id),
        ("notice log", notice.position if notice.position is not None else ""),
    ]
    rows += [(key, _cell(source[key])) for key in SOURCE_FIELDS if key in source]
    rows += [("png", str(path)) for path in paths]
    output.table(["field", "value"], rows, title=f"alert {notice.alert_id}")
    return Exit.OK


SOURCE_FIELDS = ("visit", "midpointMjdTai", "ra", "dec", "x", "y", "psfFlux", "psfFluxErr", "snr")
"""The diaSource fields shown in the text form (``--json`` has them all)."""


def _cell(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value
