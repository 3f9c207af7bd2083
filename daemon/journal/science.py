"""Science frames, their calexps and the pairs made: what the archive's science scheduling reads from the journal.

Science jobs live in the ``jobs`` table like calibration jobs (step ``calexp`` keyed by OBSID, step
``diff`` keyed by ``<GROUPID>/<science>-<reference>``), so the unique ``(step, instrument, detector,
sequence)`` index is what makes a pair "made once": a pair is journaled before it runs and never again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from daemon.journal import settings as journal_settings
from daemon.journal.products import ProductRow
from daemon.journal.products import _row as _product


@dataclass(frozen=True, slots=True, kw_only=True)
class ScienceFrame:
    """One archived science frame (IMGTYPE OBJECT with GROUPID, CURINDEX and MAXINDEX)."""

    name: str
    archive_path: str
    checksum: str
    instrument: str
    detector: str
    obsid: str
    filter: str | None
    groupid: str
    curindex: int
    maxindex: int
    arrived_at: float
    rowid: int = 0
    """Its catalog row (planning's marks are rowids)."""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_FRAME_COLUMNS = "rowid, name, archive_path, archived_checksum, instrument, detector, summary, arrived_at"
_SCIENCE = "status = 'archived' AND upper(imgtype) = 'OBJECT'"
GROUPID = "json_extract(summary, '$.groupid')"
"""The catalog's GROUPID, as its index (journal migration 5) has it: a query must name it exactly so."""
CATALOG_EPOCH = "catalog_epoch"
"""Settings key, bumped when a catalog row is removed (a release out of quarantine replaces its row): the
catalog's rowids may then be reused, so a reader that keeps a rowid mark must read everything again."""


def _frames(rows: Iterable[sqlite3.Row]) -> list[ScienceFrame]:
    out: list[ScienceFrame] = []
    for row in rows:
        summary = json.loads(row["summary"])
        groupid, obsid = summary.get("groupid"), summary.get("obsid")
        curindex, maxindex = _int(summary.get("curindex")), _int(summary.get("maxindex"))
        if not (isinstance(groupid, str) and groupid and isinstance(obsid, str) and obsid):
            continue
        if curindex is None or maxindex is None or row["instrument"] is None or row["detector"] is None:
            continue
        filter_ = summary.get("filter")
        out.append(
            ScienceFrame(
                name=row["name"],
                archive_path=row["archive_path"],
                checksum=row["archived_checksum"],
                instrument=row["instrument"],
                detector=row["detector"],
                obsid=obsid,
                filter=str(filter_) if filter_ is not None else None,
                groupid=groupid,
                curindex=curindex,
                maxindex=maxindex,
                arrived_at=float(row["arrived_at"]),
                rowid=int(row["rowid"]),
            )
        )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    """What a planning pass reads: science frames catalogued and calexps made since the last pass's marks."""

    epoch: int
    full: bool
    """Everything was read: the first pass, or the catalog's rowids may have been reused since (a release)."""
    frames: list[ScienceFrame]
    since: int
    """The frames are those catalogued after this rowid (earlier frames of their quads are not among them)."""
    catalog_mark: int
    calexps: list[ProductRow]
    products_mark: int
    resumed: bool = False
    """Read from the resume point the last run saved (:func:`resume`): the frames' quads may have earlier frames
    and calexps, to be read back as for a late frame."""
    templates: tuple[str, ...] = ()
    """On resuming: the templates the last run had seen (``calexps`` holds every calexp made since it looked)."""


def changes(db: sqlite3.Connection, epoch: int | None, catalog_mark: int, products_mark: int) -> Changes:
    """Science frames catalogued after ``catalog_mark`` and calexps catalogued after ``products_mark`` (rowids),
    oldest first, with the marks to pass next time; everything when ``epoch`` is not the catalog's now."""
    now = catalog_epoch(db)
    full = epoch != now
    if full:
        catalog_mark = products_mark = 0
    new_frames = f"SELECT {_FRAME_COLUMNS} FROM catalog WHERE {_SCIENCE} AND rowid > ? ORDER BY rowid"
    frames = _frames(db.execute(new_frames, (catalog_mark,)))
    return Changes(
        epoch=now,
        full=full,
        frames=frames,
        since=catalog_mark,
        catalog_mark=newest_rowid(db, "catalog"),
        calexps=_calexps_after(db, products_mark),
        products_mark=newest_rowid(db, "products"),
    )


def _calexps_after(db: sqlite3.Connection, products_mark: int) -> list[ProductRow]:
    """The calexps catalogued after products rowid ``products_mark``, oldest first."""
    # (+kind: by the rowid range, not the kind index, which SQLite would take and read every calexp ever made)
    query = "SELECT * FROM products WHERE +kind = 'calexp' AND rowid > ? ORDER BY rowid"
    return [_product(r) for r in db.execute(query, (products_mark,))]


RESUME = "science_resume"
"""Settings key: where a planner started after a restart may begin reading (JSON: the catalog's ``epoch``,
``catalog_low``, ``products_mark`` and the ``templates`` seen; see :func:`save_resume`)."""


def resume(db: sqlite3.Connection) -> Changes:
    """A first pass's read after a start: the frames catalogued from the resume point the last run saved
    (:func:`save_resume`) and their calexps, if the catalog's epoch is still the one it was saved in; else
    everything (:func:`changes`)."""
    now = catalog_epoch(db)
    saved = journal_settings.get(db, RESUME)
    point = json.loads(saved) if saved else {}
    fields = ("catalog_low", "products_mark")
    if not isinstance(point, dict) or point.get("epoch") != now or any(type(point.get(k)) is not int for k in fields):
        return changes(db, None, 0, 0)
    low, products_mark = int(point["catalog_low"]), int(point["products_mark"])
    query = f"SELECT {_FRAME_COLUMNS} FROM catalog WHERE {_SCIENCE} AND rowid >= ? ORDER BY rowid"
    frames = _frames(db.execute(query, (low,)))
    calexps = {p.product_id: p for p in calexps_of(db, frames)}
    calexps.update((p.product_id, p) for p in _calexps_after(db, products_mark))
    return Changes(
        epoch=now,
        full=False,
        frames=frames,
        since=low - 1,
        catalog_mark=newest_rowid(db, "catalog"),
        calexps=sorted(calexps.values(), key=lambda p: p.created_at),
        products_mark=newest_rowid(db, "products"),
        resumed=True,
        templates=tuple(str(t) for t in point.get("templates", [])),
    )


def save_resume(
    db: sqlite3.Connection, *, epoch: int, catalog_low: int, products_mark: int, templates: Iterable[str]
) -> None:
    """Every quad a planner keeps has a frame catalogued at or after ``catalog_low`` (every quad it let go is
    finished), and every calexp up to ``products_mark`` was looked at against ``templates``: a planner started
    later may read from there (:func:`resume`)."""
    point = {"epoch": epoch, "catalog_low": catalog_low, "products_mark": products_mark, "templates": list(templates)}
    journal_settings.put(db, RESUME, json.dumps(point))


def calexps_of(db: sqlite3.Connection, frames: Iterable[ScienceFrame]) -> list[ProductRow]:
    """The calexps of these frames, oldest first, each found through its calexp job (the jobs' unique index)."""
    query = (
        "SELECT p.* FROM jobs j JOIN products p ON p.job_key = j.job_key WHERE j.step = 'calexp'"
        " AND j.instrument = ? AND j.detector = ? AND j.sequence = ? AND p.kind = 'calexp'"
    )
    found = [_product(r) for f in frames for r in db.execute(query, (f.instrument, f.detector, f.obsid))]
    return sorted(found, key=lambda p: p.created_at)


def catalog_epoch(db: sqlite3.Connection) -> int:
    """The catalog's epoch: see :data:`CATALOG_EPOCH`."""
    return int(journal_settings.get(db, CATALOG_EPOCH) or 0)


def bump_catalog_epoch(db: sqlite3.Connection) -> None:
    """A catalog row was removed (inside that transaction): see :data:`CATALOG_EPOCH`."""
    journal_settings.put(db, CATALOG_EPOCH, str(catalog_epoch(db) + 1))


def newest_rowid(db: sqlite3.Connection, table: str) -> int:
    """The newest rowid of ``catalog`` or ``products`` (0 when empty): the mark of a reader of what is new."""
    assert table in ("catalog", "products")
    return int(db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0])


def group_rows(
    db: sqlite3.Connection, columns: str, where: str, groups: Iterable[tuple[str, str, str]], through: int
) -> dict[tuple[str, str, str], list[sqlite3.Row]]:
    """Catalog rows (``columns``, and ``where`` holds) of each (instrument, detector, GROUPID), catalogued up to
    rowid ``through``, oldest first, found by the GROUPID index; groups without any are left out."""
    out: dict[tuple[str, str, str], list[sqlite3.Row]] = {}
    query = (
        f"SELECT {columns} FROM catalog WHERE {GROUPID} = ? AND instrument = ? AND detector = ? AND rowid <= ?"
        f" AND {where} ORDER BY rowid"
    )
    for instrument, detector, groupid in groups:
        rows = db.execute(query, (groupid, instrument, detector, through)).fetchall()
        if rows:
            out[(instrument, detector, groupid)] = rows
    return out


def earlier_frames(
    db: sqlite3.Connection, groups: Iterable[tuple[str, str, str]], through: int
) -> dict[tuple[str, str, str], tuple[list[ScienceFrame], list[ProductRow]]]:
    """For quads on a detector, (instrument, detector, GROUPID): their science frames catalogued up to rowid
    ``through`` and those frames' calexps, oldest first (a planner reads back a quad it let go when a late
    frame reopens it; a new quad has none)."""
    out: dict[tuple[str, str, str], tuple[list[ScienceFrame], list[ProductRow]]] = {}
    for (instrument, detector, groupid), rows in group_rows(db, _FRAME_COLUMNS, _SCIENCE, groups, through).items():
        frames = [f for f in _frames(rows) if f.groupid == groupid]
        if frames:
            out[(instrument, detector, groupid)] = (frames, calexps_of(db, frames))
    return out


def job_states(db: sqlite3.Connection, step: str, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], str]:
    """(detector, sequence) → state of the ``step`` jobs of these (instrument, detector, sequence), each found
    by the jobs' unique index."""
    out: dict[tuple[str, str], str] = {}
    query = "SELECT state FROM jobs WHERE step = ? AND instrument = ? AND detector = ? AND sequence = ?"
    for instrument, detector, sequence in keys:
        row = db.execute(query, (step, instrument, detector, sequence)).fetchone()
        if row is not None:
            out[(detector, sequence)] = str(row["state"])
    return out


def diffs_of(db: sqlite3.Connection, groups: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], str]:
    """(detector, sequence) → state of the ``diff`` jobs of these (instrument, detector, GROUPID): their
    sequences are ``GROUPID/...``, a range of the jobs' unique index."""
    out: dict[tuple[str, str], str] = {}
    query = (
        "SELECT detector, sequence, state FROM jobs WHERE step = 'diff' AND instrument = ? AND detector = ?"
        " AND sequence >= ? AND sequence < ?"
    )
    for instrument, detector, groupid in groups:
        for r in db.execute(query, (instrument, detector, f"{groupid}/", f"{groupid}0")):  # ('0' follows '/')
            out[(r["detector"], r["sequence"])] = str(r["state"])
    return out


def newest_master(
    db: sqlite3.Connection, kind: str, instrument: str, detector: str, filter_: str | None = None
) -> ProductRow | None:
    """The newest master of one kind for a detector (of one filter, for flats)."""
    if filter_ is None:
        row = db.execute(
            "SELECT * FROM products WHERE kind = ? AND instrument = ? AND detector = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (kind, instrument, detector),
        ).fetchone()
    else:
        row = db.execute(
            "SELECT * FROM products WHERE kind = ? AND instrument = ? AND detector = ? AND filter = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (kind, instrument, detector, filter_),
        ).fetchone()
    return _product(row) if row is not None else None


def calexps(db: sqlite3.Connection) -> dict[tuple[str, str], ProductRow]:
    """Every calexp product, by the detector and OBSID of its visit (an exposure has one per detector)."""
    rows = db.execute("SELECT * FROM products WHERE kind = 'calexp' ORDER BY created_at").fetchall()
    out: dict[tuple[str, str], ProductRow] = {}
    for row in rows:
        product = _product(row)
        out[(product.detector, str(product.provenance["obsid"]))] = product
    return out


def alert_payload(db: sqlite3.Connection, alert_id: int) -> str | None:
    """The journaled AlertNotice of one alert (its JSON, with its position), or None."""
    row = db.execute("SELECT payload FROM notices WHERE notice_id = ?", (f"alert-{alert_id}",)).fetchone()
    return str(row[0]) if row is not None else None


def templates(db: sqlite3.Connection) -> list[ProductRow]:
    """Every template product, newest first."""
    rows = db.execute("SELECT * FROM products WHERE kind = 'template' ORDER BY created_at DESC").fetchall()
    return [_product(row) for row in rows]
