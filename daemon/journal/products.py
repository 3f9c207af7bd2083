"""The product catalog: every master the archive built, where it is, its checksum and its provenance."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductRow:
    """A catalogued product."""

    product_id: str
    job_key: str
    kind: str
    instrument: str
    detector: str
    filter: str | None
    archive_path: str
    checksum: str
    provenance: dict[str, Any]
    created_at: float

    def summary(self) -> dict[str, Any]:
        """The product without its full provenance (for listings)."""
        return {
            "product_id": self.product_id,
            "kind": self.kind,
            "instrument": self.instrument,
            "detector": self.detector,
            "filter": self.filter,
            "archive_path": self.archive_path,
            "checksum": self.checksum,
            "created_at": self.created_at,
            "frames_used": len(self.provenance.get("inputs", [])) - len(self.provenance.get("left_out", [])),
        }

    def to_dict(self) -> dict[str, Any]:
        """The product with its provenance."""
        return {**self.summary(), "job_key": self.job_key, "provenance": self.provenance}


def _row(row: sqlite3.Row) -> ProductRow:
    return ProductRow(
        product_id=row["product_id"],
        job_key=row["job_key"],
        kind=row["kind"],
        instrument=row["instrument"],
        detector=row["detector"],
        filter=row["filter"],
        archive_path=row["archive_path"],
        checksum=row["checksum"],
        provenance=json.loads(row["provenance"]),
        created_at=float(row["created_at"]),
    )


def insert(
    db: sqlite3.Connection,
    *,
    product_id: str,
    job_key: str,
    kind: str,
    instrument: str,
    detector: str,
    filter_: str | None,
    archive_path: str,
    checksum: str,
    provenance: dict[str, Any],
    at: float,
) -> None:
    """Catalogue a product (inside the transaction that journals its notice and finishes its job).

    Raises:
        sqlite3.IntegrityError: the product, its job or its path is catalogued already.
    """
    db.execute(
        "INSERT INTO products (product_id, job_key, kind, instrument, detector, filter, archive_path, checksum,"
        " provenance, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            product_id,
            job_key,
            kind,
            instrument,
            detector,
            filter_,
            archive_path,
            checksum,
            json.dumps(provenance, sort_keys=True),
            at,
        ),
    )


def by_id(db: sqlite3.Connection, product_id: str) -> ProductRow | None:
    """One product."""
    row = db.execute("SELECT * FROM products WHERE product_id = ?", (product_id,)).fetchone()
    return _row(row) if row is not None else None


def listing(db: sqlite3.Connection, kind: str | None = None, limit: int = 1000) -> list[ProductRow]:
    """Products, newest first, optionally of one kind."""
    if kind is None:
        rows = db.execute("SELECT * FROM products ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
    else:
        rows = db.execute(
            "SELECT * FROM products WHERE kind = ? ORDER BY created_at DESC LIMIT ?", (kind, limit)
        ).fetchall()
    return [_row(r) for r in rows]


def newest(db: sqlite3.Connection, kind: str, instrument: str, detector: str) -> ProductRow | None:
    """The newest product of one kind for one detector (the master that later steps apply)."""
    row = db.execute(
        "SELECT * FROM products WHERE kind = ? AND instrument = ? AND detector = ? ORDER BY created_at DESC LIMIT 1",
        (kind, instrument, detector),
    ).fetchone()
    return _row(row) if row is not None else None
