"""What retention reads and writes: copies in custody, products that may expire, and the expiry markers.

A deleted product keeps its catalogue row (provenance still resolves); it is marked expired by a row
in ``settings`` (``expired_product:<product_id>`` → JSON ``{at, kind, archive_path}``), which needs no
schema change.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from daemon.journal.products import ProductRow
from daemon.journal.products import _row as _product

EXPIRED_PREFIX = "expired_product:"
MASTER_KINDS = ("bias", "dark", "flat")
PENDING_JOB_STATES = ("queued", "running")


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyRow:
    """A local copy (summit inbox file or relay copy) whose file the archive has in custody."""

    file_key: str
    name: str
    size: int
    mtime_ns: int | None  # of an inbox file when it was registered (None for a relay copy)
    local_path: str
    custody_at: float


def copies_in_custody(db: sqlite3.Connection, limit: int) -> list[CopyRow]:
    """Files in verified custody whose local copy still exists, the longest in custody first."""
    rows = db.execute(
        "SELECT file_key, name, size, mtime_ns, local_path, custody_at FROM files WHERE state = 'archived'"
        " AND custody_at IS NOT NULL ORDER BY custody_at LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        CopyRow(
            file_key=str(r["file_key"]),
            name=str(r["name"]),
            size=int(r["size"]),
            mtime_ns=None if r["mtime_ns"] is None else int(r["mtime_ns"]),
            local_path=str(r["local_path"]),
            custody_at=float(r["custody_at"]),
        )
        for r in rows
    ]


def mark_copies_expired(db: sqlite3.Connection, file_keys: Iterable[str]) -> None:
    """Local copies deleted after custody (only files still ``archived``: custody is what allows it)."""
    db.executemany(
        "UPDATE files SET state = 'expired' WHERE file_key = ? AND state = 'archived'", [(k,) for k in file_keys]
    )


def expirable_products(db: sqlite3.Connection, cutoffs: Mapping[str, float], limit: int) -> list[ProductRow]:
    """Products created before their kind's cutoff, not yet expired, not read by a queued or running job,
    not the newest master of their detector (and filter, for flats), and for a calexp not of a quad with a
    frame newer than the cutoff; oldest first."""
    out: list[ProductRow] = []
    for kind, cutoff in cutoffs.items():
        rows = db.execute(
            "SELECT * FROM products p WHERE kind = ? AND created_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM settings s WHERE s.key = ? || p.product_id)"
            " ORDER BY created_at LIMIT ?",
            (kind, cutoff, EXPIRED_PREFIX, limit),
        ).fetchall()
        for row in rows:
            product = _product(row)
            if _in_use(db, product) or _newest_master(db, product):
                continue
            if kind == "calexp" and _quad_recent(db, product, cutoff):
                continue
            out.append(product)
    return out[:limit]


def _quad_recent(db: sqlite3.Connection, product: ProductRow, cutoff: float) -> bool:
    """Whether a frame of the calexp's quad (its GROUPID on its detector) arrived after ``cutoff``: the
    scheduler may still pair the visit (up to the chunk's end), so the calexp is kept as long after the
    quad's last frame as after its own creation."""
    groupid = product.provenance.get("groupid")
    if not isinstance(groupid, str):
        return False
    row = db.execute(
        "SELECT 1 FROM catalog WHERE instrument = ? AND detector = ? AND json_extract(summary, '$.groupid') = ?"
        " AND arrived_at > ? LIMIT 1",
        (product.instrument, product.detector, groupid, cutoff),
    ).fetchone()
    return row is not None


def _in_use(db: sqlite3.Connection, product: ProductRow) -> bool:
    """Whether a queued or running job names the product (its id or path) among its inputs or masters."""
    placeholders = ", ".join("?" for _ in PENDING_JOB_STATES)
    row = db.execute(
        f"SELECT 1 FROM jobs WHERE state IN ({placeholders}) AND (instr(spec, ?) > 0 OR instr(spec, ?) > 0) LIMIT 1",
        (*PENDING_JOB_STATES, product.archive_path, product.product_id),
    ).fetchone()
    return row is not None


def _newest_master(db: sqlite3.Connection, product: ProductRow) -> bool:
    """Whether the product is the master later steps apply (the newest of its kind for its detector)."""
    if product.kind not in MASTER_KINDS:
        return False
    sql = "SELECT product_id FROM products WHERE kind = ? AND instrument = ? AND detector = ?"
    args: list[object] = [product.kind, product.instrument, product.detector]
    if product.kind == "flat":
        sql += " AND filter IS ?"
        args.append(product.filter)
    row = db.execute(sql + " ORDER BY created_at DESC LIMIT 1", args).fetchone()
    return row is not None and row["product_id"] == product.product_id


def oldest_unexpired(db: sqlite3.Connection, kind: str) -> float | None:
    """Creation time of the oldest product of ``kind`` not yet expired."""
    row = db.execute(
        "SELECT MIN(created_at) AS at FROM products p WHERE kind = ?"
        " AND NOT EXISTS (SELECT 1 FROM settings s WHERE s.key = ? || p.product_id)",
        (kind, EXPIRED_PREFIX),
    ).fetchone()
    return float(row["at"]) if row is not None and row["at"] is not None else None


def mark_product_expired(db: sqlite3.Connection, product: ProductRow, at: float) -> None:
    """The product's file was deleted; its catalogue row stays, marked expired."""
    value = json.dumps({"at": at, "kind": product.kind, "archive_path": product.archive_path}, sort_keys=True)
    db.execute(
        "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (EXPIRED_PREFIX + product.product_id, value)
    )


def expired_products(db: sqlite3.Connection) -> dict[str, dict[str, object]]:
    """Every expired product: id → ``{at, kind, archive_path}``."""
    rows = db.execute(
        "SELECT key, value FROM settings WHERE key LIKE ? ESCAPE '\\'", (EXPIRED_PREFIX.replace("_", "\\_") + "%",)
    ).fetchall()
    return {str(r["key"])[len(EXPIRED_PREFIX) :]: json.loads(r["value"]) for r in rows}


def expired_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Expired products by kind (over the journal's whole history)."""
    counts: dict[str, int] = {}
    for marker in expired_products(db).values():
        kind = str(marker.get("kind"))
        counts[kind] = counts.get(kind, 0) + 1
    return counts
