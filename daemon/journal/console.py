"""What the operator's console reads from the journal: the timeline, latency, completeness, notices."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

NOTICE_KINDS = ("arrivals", "exposures", "products", "alerts")
RECENT_WINDOW = 5000
"""How many of the newest notices are searched for the recent products and alerts."""


ROUTINE_KINDS = ("retention_deleted", "held_offered")
"""Events of everyday work: at most ``ROUTINE_KEPT`` of them in the timeline, so that they do not push a
failover or a problem out of it (each is still journaled, published and counted)."""
ROUTINE_KEPT = 5
TIMELINE_WINDOW = 20_000
"""How many of the newest reports the timeline is chosen from."""


def timeline(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest problems and events (the journaled report log), oldest first, as published plus their stream;
    of the routine kinds only the newest few."""
    marks = ", ".join("?" for _ in ROUTINE_KINDS)
    newest = "seq > (SELECT COALESCE(MAX(seq), 0) FROM reports) - ?"  # a bounded scan, by the primary key
    rows = db.execute(
        f"SELECT seq, stream, payload FROM reports WHERE {newest} AND kind NOT IN ({marks}) ORDER BY seq DESC LIMIT ?",
        (TIMELINE_WINDOW, *ROUTINE_KINDS, limit),
    ).fetchall()
    rows += db.execute(
        f"SELECT seq, stream, payload FROM reports WHERE {newest} AND kind IN ({marks}) ORDER BY seq DESC LIMIT ?",
        (TIMELINE_WINDOW, *ROUTINE_KINDS, min(ROUTINE_KEPT, limit)),
    ).fetchall()
    rows = sorted(rows, key=lambda r: int(r["seq"]), reverse=True)[:limit]
    out: list[dict[str, Any]] = []
    for row in reversed(rows):
        entry = json.loads(row["payload"])
        entry["stream"] = row["stream"]
        out.append(entry)
    return out


def latencies(db: sqlite3.Connection, limit: int) -> list[tuple[float, float]]:
    """(arrived at, close → archive seconds) of the newest archived files, oldest first."""
    rows = db.execute(
        "SELECT arrived_at, arrived_at - closed_at AS latency FROM catalog ORDER BY rowid DESC LIMIT ?", (limit,)
    ).fetchall()
    return [(float(r["arrived_at"]), float(r["latency"])) for r in reversed(rows)]


def recent_arrivals(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest archived files, newest first: name, obsid, detector, route, when and close → archive seconds."""
    rows = db.execute(
        "SELECT name, obsid, detector, route, status, closed_at, arrived_at FROM catalog"
        " ORDER BY rowid DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {
            "name": r["name"],
            "obsid": r["obsid"],
            "detector": r["detector"],
            "route": r["route"],
            "status": r["status"],
            "arrived_at": float(r["arrived_at"]),
            "latency_s": round(max(0.0, float(r["arrived_at"]) - float(r["closed_at"])), 2),
        }
        for r in rows
    ]


def recent_exposures(db: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest exposures with their detectors expected and arrived, newest first."""
    rows = db.execute("SELECT * FROM exposures ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for r in rows:
        expected = json.loads(r["expected"])
        arrived = json.loads(r["detectors"])
        out.append(
            {
                "instrument": r["instrument"],
                "obsid": r["obsid"],
                "state": r["state"],
                "expected": len(expected),
                "arrived": len(set(arrived) & set(expected)) if expected else len(arrived),
                "missing": sorted(set(expected) - set(arrived))[:20],
                "first_at": float(r["first_at"]),
                "last_at": float(r["last_at"]),
            }
        )
    return out


def notice_counts_after(db: sqlite3.Connection, position: int) -> tuple[dict[str, int], int]:
    """Notices journaled after ``position`` by kind (arrivals, exposures, products, alerts), and the newest
    position: the caller keeps running totals, so each call reads only what is new."""
    counts = dict.fromkeys(NOTICE_KINDS, 0)
    rows = db.execute(
        "SELECT CASE WHEN topic LIKE 'skyrelay/v1/arrivals/%/exposure' THEN 'exposures'"
        " ELSE substr(topic, 13, instr(substr(topic, 13), '/') - 1) END AS kind, COUNT(*) AS n, MAX(rowid) AS last"
        " FROM notices WHERE rowid > ? GROUP BY kind",
        (position,),
    ).fetchall()
    newest = position
    for r in rows:
        if r["kind"] in counts:
            counts[r["kind"]] = int(r["n"])
        newest = max(newest, int(r["last"]))
    return counts, newest


def recent_notices(db: sqlite3.Connection, kinds: tuple[str, ...], limit: int) -> list[dict[str, Any]]:
    """The newest notices of some kinds (``products``, ``alerts``), newest first: topic, time and a short summary."""
    patterns = [f"skyrelay/v1/{kind}/%" for kind in kinds]
    where = " OR ".join("topic LIKE ?" for _ in patterns) or "0"
    rows = db.execute(
        "SELECT topic, payload, created_at FROM notices"
        f" WHERE rowid > (SELECT coalesce(max(rowid), 0) FROM notices) - ? AND ({where}) ORDER BY rowid DESC LIMIT ?",
        (RECENT_WINDOW, *patterns, limit),
    ).fetchall()
    out = []
    for r in rows:
        try:
            body = json.loads(r["payload"])
        except ValueError:
            body = {}
        summary = {k: body[k] for k in ("kind", "detector", "product_id", "alert_id", "visits") if k in body}
        out.append({"topic": r["topic"], "at": float(r["created_at"]), **summary})
    return out
