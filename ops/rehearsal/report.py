"""``W/report.html``: the rehearsal in one self-contained page (inline CSS, plots as embedded PNG, no network).

The verdict first (all good, or exactly what is missing); then transfer (latency close → archive as a
histogram and over time with the network drill marked, throughput), completeness per night and exposure,
master calibrations (thumbnails, statistics, frames left out and why), difference imaging (completeness by
SNR against the injected truth, the pairs made, a few alert cutouts), and a timeline of problems and events.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from matplotlib.figure import Figure

from ops.rehearsal.checks import expected_pairs, pairs_made

ROUTE_COLOURS = {"primary": "#2a7ab9", "direct": "#e08a1e"}
DRILL_MARKS = (
    ("cut_at", "link cut", "#c0392b"),
    ("broker_killed_at", "broker SIGKILL", "#8e44ad"),
    ("broker_restarted_at", "broker back", "#16a085"),
    ("restored_at", "link restored", "#27ae60"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:18px 28px;background:#1d2330;color:#fff}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
main{padding:18px 28px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
.verdict{border-radius:8px;padding:16px 22px;font-size:20px;font-weight:600;margin:16px 0}
.good{background:#e3f6e8;color:#17632f;border:2px solid #2ea44f}
.bad{background:#fdeaea;color:#8a1c1c;border:2px solid #d73a49}
.verdict ul{font-size:14px;font-weight:400;margin:8px 0 0}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#f7f8fa;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#5a6270}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{padding:3px 8px;border-bottom:1px solid #e3e5e8;text-align:left}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.warn td{background:#fff6e0}tr.fail td{background:#fdeaea}
.ok{color:#17632f;font-weight:600}.no{color:#b31d28;font-weight:600}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumb{background:#f7f8fa;border-radius:6px;padding:6px;font-size:11.5px;width:190px}
.thumb img{width:180px;height:auto;display:block}.cutouts{display:flex;flex-wrap:wrap;gap:12px}
.cutout{background:#f7f8fa;border-radius:6px;padding:6px;font-size:11.5px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}small{color:#5a6270}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _png(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _arrivals(observed: dict[str, Any]) -> list[dict[str, Any]]:
    found = [n["message"] for n in observed["notices"] if n["message"].get("type") == "arrival"]
    return sorted(found, key=lambda a: a["arrived_at"])


def _t0(truth: dict[str, Any]) -> float:
    return float(truth.get("started_at") or 0.0)


def _mark_drill(ax: Any, observed: dict[str, Any], verdict: dict[str, Any], t0: float) -> None:
    drill = verdict.get("drill") or {}
    for key, label, colour in DRILL_MARKS:
        at = drill.get(key)
        if at is not None:
            ax.axvline(at - t0, color=colour, linestyle="--", linewidth=1.2, label=label)
    if drill.get("cut_at") is not None and drill.get("failover_s") is not None:
        start = drill["cut_at"] - t0
        ax.axvspan(
            start,
            start + drill["failover_s"],
            color="#c0392b",
            alpha=0.12,
            label=f"failover {drill['failover_s']:.1f} s",
        )
    if drill.get("restored_at") is not None and drill.get("failback_s") is not None:
        start = drill["restored_at"] - t0
        ax.axvspan(
            start,
            start + drill["failback_s"],
            color="#27ae60",
            alpha=0.12,
            label=f"failback {drill['failback_s']:.1f} s",
        )


def _shade_phases(ax: Any, observed: dict[str, Any], t0: float, end: float) -> None:
    starts = [
        (m["at"] - t0, m.get("phase"), m.get("day"))
        for m in observed["timeline"]
        if m.get("phase") in ("afternoon", "night")
    ]
    for i, (at, phase, day) in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else end
        if phase == "night":
            ax.axvspan(at, until, color="#1d2330", alpha=0.06)
        label, height = (f"day {day}", 1.0) if phase == "afternoon" else (f"night {day}", 0.94)
        ax.annotate(label, (at, height), xycoords=("data", "axes fraction"), fontsize=8, color="#5a6270", va="bottom")


def transfer_plots(truth: dict[str, Any], observed: dict[str, Any], verdict: dict[str, Any]) -> str:
    """Latency histogram, latency over time (drill marked), throughput over time."""
    arrivals = _arrivals(observed)
    if not arrivals:
        return "<p class='no'>No file arrived at the archive.</p>"
    t0 = _t0(truth)
    routes = sorted({a["route"] for a in arrivals})
    out = []
    fig = Figure(figsize=(6.2, 3.2), dpi=100)
    ax = fig.add_subplot()
    latencies = [float(a["latency_s"]) for a in arrivals]
    bins = np.linspace(0, max(latencies) * 1.02 + 1e-3, 40)
    ax.hist(
        [[float(a["latency_s"]) for a in arrivals if a["route"] == r] for r in routes],
        bins=[float(b) for b in bins],
        stacked=True,
        label=routes,
        color=[ROUTE_COLOURS.get(r, "#888") for r in routes],
    )
    for q, style in ((50, "-"), (90, "--"), (99, ":")):
        value = float(np.percentile(latencies, q))
        ax.axvline(value, color="#333", linestyle=style, linewidth=1, label=f"p{q} {value:.2f} s")
    ax.set_xlabel("latency close → archive (s)")
    ax.set_ylabel("files")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Latency of every file")
    out.append(_png(fig, "latency histogram"))

    fig = Figure(figsize=(12, 3.6), dpi=100)
    ax = fig.add_subplot()
    for route in routes:
        mine = [a for a in arrivals if a["route"] == route]
        ax.scatter(
            [a["arrived_at"] - t0 for a in mine],
            [a["latency_s"] for a in mine],
            s=6,
            color=ROUTE_COLOURS.get(route, "#888"),
            label=f"via {route}",
        )
    _mark_drill(ax, observed, verdict, t0)
    _shade_phases(ax, observed, t0, max(a["arrived_at"] for a in arrivals) - t0)
    ax.set_xlabel("seconds since the rehearsal started (archive time)")
    ax.set_ylabel("latency (s)")
    ax.set_title("Latency over time, with the network drill")
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    out.append(_png(fig, "latency over time"))

    fig = Figure(figsize=(12, 2.8), dpi=100)
    ax = fig.add_subplot()
    times = np.array([a["arrived_at"] - t0 for a in arrivals])
    sizes = np.array([float(a["size"]) for a in arrivals])
    width = 5.0
    edges = np.arange(0, times.max() + width, width)
    counts, _ = np.histogram(times, bins=edges)
    volume, _ = np.histogram(times, bins=edges, weights=sizes)
    ax.bar(edges[:-1], counts / width, width=width, align="edge", color="#2a7ab9", alpha=0.8, label="files/s")
    ax.set_ylabel("files / s")
    twin = ax.twinx()
    twin.plot(edges[:-1] + width / 2, volume / width / 1e6, color="#e08a1e", linewidth=1.2, label="MB/s")
    twin.set_ylabel("MB / s")
    _mark_drill(ax, observed, verdict, t0)
    ax.set_xlabel("seconds since the rehearsal started")
    ax.set_title(f"Throughput ({width:.0f} s bins)")
    out.append(_png(fig, "throughput over time"))
    return "\n".join(out)


def completeness_tables(truth: dict[str, Any], observed: dict[str, Any]) -> str:
    """Per night and exposure: detectors expected, arrived, late, missing, quarantined, released."""
    rows_by_obsid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in observed["catalog"]:
        rows_by_obsid[str(row["obsid"])].append(row)
    late_at: dict[str, float] = {}
    for n in observed["notices"]:
        m = n["message"]
        if m.get("type") == "exposure" and m.get("state") == "late":
            late_at.setdefault(m["obsid"], float(m["at"]))
    quarantined_names = {r.get("name") for r in observed["reports"] if r.get("kind") == "quarantined"}
    out = []
    for dayobs in truth["plan"]["dayobs"]:
        exposures = sorted((o, e) for o, e in truth["exposures"].items() if e["dayobs"] == dayobs)
        lost = sorted(o for o, lo in truth["lost"].items() if lo["dayobs"] == dayobs)
        body = []
        totals: Counter[str] = Counter()
        for obsid, exp in exposures:
            rows = rows_by_obsid.get(obsid, [])
            archived = [r for r in rows if r["status"] == "archived"]
            late = [r for r in archived if obsid in late_at and r["arrived_at"] > late_at[obsid]]
            missing = sorted(set(exp["expected"]) - {r["detector"] for r in archived})
            quarantined = [r for r in rows if r["name"] in quarantined_names or r["status"] == "quarantined"]
            released = [r for r in rows if r["released_at"] is not None]
            totals.update(
                expected=len(exp["expected"]),
                arrived=len(archived),
                late=len(late),
                missing=len(missing),
                quarantined=len(quarantined),
                released=len(released),
            )
            cls = "fail" if missing else "warn" if (late or quarantined) else ""
            body.append(
                f"<tr class='{cls}'><td>{_esc(obsid)}</td><td>{_esc(exp['label'])}</td><td>{_esc(exp['kind'])}</td>"
                f"<td class=num>{len(exp['expected'])}</td><td class=num>{len(archived)}</td>"
                f"<td class=num>{len(late)}</td>"
                f"<td>{_esc(', '.join(missing)) or '&ndash;'}</td><td class=num>{len(quarantined)}</td>"
                f"<td class=num>{len(released)}</td></tr>"
            )
        for obsid in lost:
            body.append(
                f"<tr class='warn'><td>{_esc(obsid)}</td><td>visit v{truth['lost'][obsid]['curindex']} of "
                f"{_esc(truth['lost'][obsid]['group_id'])}</td><td>lost</td><td class=num>0</td><td class=num>0</td>"
                "<td class=num>0</td><td>never taken (a sequence gap)</td><td class=num>0</td><td class=num>0</td></tr>"
            )
        title = truth["plan"]["titles"].get(dayobs, "")
        summary = (
            f"{dayobs} — {_esc(title)}: {len(exposures)} exposures, {totals['arrived']}/{totals['expected']} "
            f"detectors arrived, {totals['late']} late, {totals['missing']} missing, {totals['quarantined']} "
            f"quarantined, {totals['released']} released, {len(lost)} visit(s) lost"
        )
        out.append(
            f"<details{' open' if totals['missing'] or totals['quarantined'] else ''}><summary>{summary}</summary>"
            "<table><tr><th>exposure</th><th>what</th><th>kind</th>"
            "<th>expected</th><th>arrived</th><th>late</th><th>missing</th><th>quarantined</th><th>released</th></tr>"
            + "".join(body)
            + "</table></details>"
        )
    return "\n".join(out)


def _thumbnail(path: Path) -> str | None:
    try:
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul["IMAGE"].data, dtype=np.float64)
    except (OSError, KeyError, ValueError):
        return None
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [1, 99])
    fig = Figure(figsize=(2.0, 2.0), dpi=90)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(data, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
    ax.set_axis_off()
    return _png(fig, f"master {path.name}")


def _amp_stat(stats: dict[str, Any], key: str) -> float | None:
    values = [float(a[key]) for a in (stats.get("amps") or {}).values() if a.get(key) is not None]
    return float(np.median(values)) if values else None


def masters_section(truth: dict[str, Any], observed: dict[str, Any]) -> str:
    """Thumbnails of one detector's masters with statistics; a table per sequence; frames left out."""
    root = Path(observed["archive_root"])
    products = [
        n["message"]
        for n in observed["notices"]
        if n["topic"].startswith("skyrelay/v1/products/") and n["message"].get("kind") in ("bias", "dark", "flat")
    ]
    seq_of: dict[str, dict[str, Any]] = {}
    for product in products:
        names = {i.get("name") for i in product.get("inputs") or []}
        for seq in truth["sequences"]:
            if seq["kind"] == product["kind"] and seq["detector"] == product["detector"] and names & set(seq["names"]):
                seq_of[product["product_id"]] = seq
    detector = sorted(truth["plan"]["detectors"])[len(truth["plan"]["detectors"]) // 2]
    thumbs = []
    for product in sorted(products, key=lambda p: p.get("created_at", 0)):
        if product["detector"] != detector:
            continue
        seq = seq_of.get(product["product_id"], {})
        image = _thumbnail(root / product["archive_path"]) or "<p class='no'>(file unreadable)</p>"
        stats = product.get("stats") or {}
        lines = [
            f"<b>day {seq.get('day', '?')} {product['kind']}</b> #{seq.get('step', 0) + 1} {_esc(seq.get('note', ''))}",
            f"frames used {stats.get('frames_used')} of {len(product.get('inputs') or [])}",
        ]
        mean, stdev = _amp_stat(stats, "mean"), _amp_stat(stats, "stdev")
        if mean is not None:
            lines.append(f"mean {mean:.4g}, stdev {stdev:.3g} (median over amps)")
        noise = _amp_stat(stats, "read_noise_adu")
        if noise is not None:
            lines.append(f"read noise {noise:.2f} ADU")
        dark = _amp_stat(stats, "dark_current_adu_per_s")
        if dark is not None:
            lines.append(f"dark {dark:.4f} ADU/s")
        if product.get("left_out"):
            lines.append(f"<span class=no>{len(product['left_out'])} frame(s) left out</span>")
        thumbs.append(f"<div class=thumb>{image}{'<br>'.join(lines)}</div>")
    rows = []
    by_seq: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for product in products:
        seq = seq_of.get(product["product_id"])
        if seq is not None:
            by_seq[(seq["day"], seq["step"])].append(product)
    for seq in truth["sequences"]:
        if seq["detector"] != truth["plan"]["detectors"][0]:
            continue
        made = by_seq.get((seq["day"], seq["step"]), [])
        used = sorted({p["stats"].get("frames_used") for p in made})
        noises = [n for p in made if (n := _amp_stat(p["stats"], "read_noise_adu")) is not None]
        cls = "" if len(made) == len(truth["plan"]["detectors"]) else "fail"
        rows.append(
            f"<tr class='{cls}'><td>{seq['dayobs']}</td><td>{seq['kind']}</td><td>{_esc(seq['note'])}</td>"
            f"<td class=num>{seq['planned']}</td><td class=num>{len(seq['names'])}</td>"
            f"<td class=num>{len(made)}/{len(truth['plan']['detectors'])}</td><td>{used}</td>"
            f"<td class=num>{len(seq['left_out'])}</td>"
            f"<td class=num>{(f'{np.median(noises):.2f}' if noises else '&ndash;')}</td></tr>"
        )
    left = []
    for product in products:
        for item in product.get("left_out") or []:
            left.append(
                f"<tr><td>{_esc(item.get('name'))}</td><td>{product['kind']}</td><td>{_esc(item.get('reason'))}</td></tr>"
            )
    problems = [r for r in observed["reports"] if r.get("kind") in ("sequence_incomplete", "frames_left_out")]
    notes = "".join(f"<li>{_esc(r['kind'])}: {_esc(r['text'])}</li>" for r in problems[:60])
    return (
        f"<h3>Masters of {detector}, in the order they were made</h3><div class=thumbs>{''.join(thumbs)}</div>"
        "<h3>Every sequence (per detector: masters made, frames used, left out)</h3>"
        "<table><tr><th>dayobs</th><th>kind</th>"
        "<th>note</th><th>planned</th><th>written</th><th>masters</th><th>frames used</th><th>left out</th>"
        "<th>read noise (ADU)</th></tr>"
        + "".join(rows)
        + "</table>"
        + (
            f"<details><summary>Frames left out ({len(left)})</summary>"
            "<table><tr><th>frame</th><th>master</th><th>reason</th></tr>" + "".join(left[:200]) + "</table></details>"
            if left
            else "<p>Frames left out: none</p>"
        )
        + (
            f"<details><summary>What the archive reported ({len(problems)})</summary><ul>{notes}</ul></details>"
            if notes
            else ""
        )
    )


def _cutout_png(encoded: str | None, title: str) -> str:
    if not encoded:
        return ""
    try:
        with fits.open(io.BytesIO(base64.b64decode(encoded)), memmap=False) as hdul:
            hdu = next(h for h in hdul if getattr(h, "data", None) is not None)
            data = np.asarray(hdu.data, dtype=np.float64)
    except (OSError, ValueError, StopIteration):
        return ""
    fig = Figure(figsize=(1.5, 1.6), dpi=90)
    ax = fig.add_axes((0, 0, 1, 0.88))
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    ax.imshow(data, origin="lower", cmap="viridis", vmin=low, vmax=high if high > low else low + 1)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8, y=0.99)
    return _png(fig, title)


def science_section(truth: dict[str, Any], observed: dict[str, Any], verdict: dict[str, Any]) -> str:
    """Completeness by SNR, the pairs made (lost-visit ones included), a few alert cutouts."""
    out = []
    table = verdict["completeness_by_snr"]
    if table:
        fig = Figure(figsize=(6.2, 3.0), dpi=100)
        ax = fig.add_subplot()
        snrs = [r["snr"] for r in table]
        ax.plot(snrs, [r["fraction"] for r in table], "o-", color="#2a7ab9")
        for r in table:
            ax.annotate(
                f"{r['recovered']}/{r['injected']}",
                (r["snr"], r["fraction"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
            )
        ax.axhline(0.9, color="#888", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(snrs, [f"{s:g}" for s in snrs])
        ax.set_ylim(0, 1.12)
        ax.set_xlabel("injected difference SNR")
        ax.set_ylabel("recovered")
        ax.set_title("Detections against the injected truth")
        out.append(_png(fig, "completeness by SNR"))
    made = pairs_made(truth, observed)
    calexps = [n["message"] for n in observed["notices"] if n["message"].get("kind") == "calexp"]
    expected = expected_pairs(truth, calexps, observed.get("reports"))
    planned = {(p["group_id"], p["detector"]): p["pairs"] for p in truth["pairs"]}
    groups: dict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: {"made": Counter(), "expected": Counter(), "planned": Counter()}
    )
    for (group, _detector), pairs in planned.items():
        for sci, ref, reason in pairs:
            groups[group]["planned"][f"{sci}-{ref} {reason}"] += 1
    for (group, _detector), pairs in made.items():
        for sci, ref, reason in pairs:
            groups[group]["made"][f"{sci}-{ref} {reason}"] += 1
    for (group, _detector), pairs in expected.items():
        for sci, ref, reason in pairs:
            groups[group]["expected"][f"{sci}-{ref} {reason}"] += 1
    rows = []
    for group in sorted(groups):
        m, e = groups[group]["made"], groups[group]["expected"]
        short = groups[group]["planned"] - e
        cls = "" if m == e else "fail"
        describe = ", ".join(f"{k} x{v}" for k, v in sorted(m.items())) or "none"
        special = any("lost" in k or "desperate" in k for k in e)
        rows.append(
            f"<tr class='{cls if cls else ('warn' if special else '')}'><td>{_esc(group)}</td><td>{_esc(describe)}</td>"
            f"<td>{'as expected' if m == e else _esc(', '.join(f'{k} x{v}' for k, v in sorted(e.items())))}</td>"
            f"<td>{_esc(', '.join(f'{k} x{v}' for k, v in sorted(short.items())) or '-')}</td></tr>"
        )
    out.append(
        "<h3>Pairs made per quad (counts over detectors; lost-visit pairs highlighted)</h3><table><tr><th>quad</th>"
        "<th>differences made</th><th>against the rules</th><th>not made: visit rejected by chance or too few stars "
        "to match PSFs</th></tr>" + "".join(rows) + "</table>"
    )
    matches = {str(m["alert_id"]): m for m in verdict["matches"] if m["alert_id"] is not None}
    cutouts = []
    for alert_id, images in (observed.get("cutouts") or {}).items():
        match = matches.get(alert_id)
        if match is None:
            continue
        panels = "".join(
            _cutout_png(images.get(k), t)
            for k, t in (
                ("cutoutScience", "science"),
                ("cutoutTemplate", "reference"),
                ("cutoutDifference", "difference"),
            )
        )
        measured = match.get("measured_snr")
        cutouts.append(
            f"<div class=cutout><div style='display:flex;gap:4px'>{panels}</div>{_esc(match['science'])} "
            f"{_esc(match['detector'])} pair {match['pair']}<br>injected SNR {match['snr']:g}, measured "
            f"{(f'{measured:.1f}' if isinstance(measured, int | float) else '?')}"
            f", offset {match['distance_px']} px</div>"
        )
    if cutouts:
        out.append("<h3>A few alerts at injected transients</h3><div class=cutouts>" + "".join(cutouts) + "</div>")
    unmatched = len(observed["alerts"]) - len({m["alert_id"] for m in verdict["matches"] if m["alert_id"] is not None})
    out.append(
        f"<p><small>{len(observed['alerts'])} alerts published; {unmatched} are not at an injected transient "
        "(subtraction residuals of stars, noise peaks).</small></p>"
    )
    return "\n".join(out)


def timeline_section(truth: dict[str, Any], observed: dict[str, Any]) -> str:
    """The rehearsal's steps and every site's problems and events, on one time axis and in a table."""
    t0 = _t0(truth)
    reports = sorted(observed["reports"], key=lambda r: r["at"])
    lanes = [*sorted({f"{r['site']} {r['stream']}" for r in reports}), "rehearsal"]
    fig = Figure(figsize=(12, 0.5 + 0.45 * len(lanes)), dpi=100)
    ax = fig.add_subplot()
    colours = {"problem": "#d73a49", "event": "#2a7ab9"}
    for r in reports:
        ax.scatter(
            r["at"] - t0,
            lanes.index(f"{r['site']} {r['stream']}"),
            s=14,
            color=colours.get(r["stream"], "#888"),
            marker="x" if r["stream"] == "problem" else "o",
        )
    for m in observed["timeline"]:
        ax.scatter(m["at"] - t0, lanes.index("rehearsal"), s=18, color="#1d2330", marker="|")
    for key, label, colour in DRILL_MARKS:
        at = (observed.get("drill") or {}).get(key)
        if at is not None:
            ax.axvline(at - t0, color=colour, linestyle="--", linewidth=1)
            ax.annotate(label, (at - t0, len(lanes) - 0.5), fontsize=7, color=colour, rotation=90, va="top")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel("seconds since the rehearsal started")
    ax.set_title("Problems (x) and events (●) of every site, and the rehearsal's steps")
    plot = _png(fig, "timeline")
    kinds = Counter(f"{r['site']} {r['stream']} {r['kind']}" for r in reports)
    counts = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()))
    steps = sorted(
        [
            *(
                {"at": m["at"], "site": "rehearsal", "stream": "step", "kind": "", "text": m["what"]}
                for m in observed["timeline"]
            ),
            *reports,
        ],
        key=lambda r: r["at"],
    )
    rows = []
    for r in steps[:400]:
        cls = "fail" if r["stream"] == "problem" else ""
        rows.append(
            f"<tr class='{cls}'><td class=num>{r['at'] - t0:.1f}</td><td>{_esc(r['site'])}</td>"
            f"<td>{_esc(r['stream'])}</td>"
            f"<td>{_esc(r['kind'])}</td><td>{_esc(str(r['text'])[:300])}</td></tr>"
        )
    return (
        plot + f"<p><small>{_esc(counts)}</small></p><details><summary>Every step, problem and event ({len(steps)})"
        "</summary><table><tr><th>s</th><th>site</th><th>what</th><th>kind</th><th>message</th></tr>"
        + "".join(rows)
        + "</table></details>"
    )


def _verdict_html(verdict: dict[str, Any]) -> str:
    warnings = [w for c in verdict["checks"] for w in c.get("warnings", [])]
    more = f"<li>and {len(warnings) - 3} more notes (see the checks below)</li>" if len(warnings) > 3 else ""
    noted = ("<ul>" + "".join(f"<li>note: {_esc(w)}</li>" for w in warnings[:3]) + more + "</ul>") if warnings else ""
    if verdict["ok"]:
        return (
            "<div class='verdict good'>✔ All good: every file archived exactly once with its checksum, every "
            f"expected product made, alerts recovered against the injected truth.{noted}</div>"
        )
    failed = [c for c in verdict["checks"] if not c["ok"]]
    items = "".join(
        f"<li><b>{_esc(c['name'])}</b>: {_esc(c['summary'])}<ul>"
        + "".join(f"<li>{_esc(p)}</li>" for p in c["problems"][:15])
        + "</ul></li>"
        for c in failed
    )
    return f"<div class='verdict bad'>✘ Not OK: {len(failed)} check(s) failed<ul>{items}</ul></div>"


def _cards(numbers: dict[str, Any]) -> str:
    lat = numbers["latency_s"]

    def card(value: Any, label: str) -> str:
        shown = "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        return f"<div class=card><b>{_esc(shown)}</b><span>{_esc(label)}</span></div>"

    products = numbers["products"]
    recovered = f"{numbers['injections_recovered']}/{numbers['injections']}" if numbers["injections"] else None
    return (
        "<div class=cards>"
        + "".join(
            [
                card(f"{numbers['files_archived']}/{numbers['files_written']}", "files archived / written"),
                card(f"{numbers['bytes_written'] / 1e6:.0f} MB", "written"),
                card(lat["p50"], "latency p50 (s)"),
                card(lat["p90"], "latency p90 (s)"),
                card(lat["p99"], "latency p99 (s)"),
                card(lat["max"], "latency max (s)"),
                card(numbers["failover_s"], "failover (s)"),
                card(numbers["failback_s"], "failback (s)"),
                card(f"{numbers['exposures_complete']}/{numbers['exposures']}", "exposures complete as written"),
                card(sum(products.get(k, 0) for k in ("bias", "dark", "flat")), "masters"),
                card(products.get("calexp", 0), "calexps"),
                card(products.get("diff", 0), "differences"),
                card(numbers["alerts"], "alerts"),
                card(recovered, "injections recovered"),
                card(numbers["wall_s"], "wall time (s)"),
            ]
        )
        + "</div>"
    )


def write_report(
    path: Path, truth: dict[str, Any], observed: dict[str, Any], verdict: dict[str, Any], numbers: dict[str, Any]
) -> None:
    """Write the self-contained report."""
    plan = truth["plan"]
    checks = "".join(
        f"<tr><td class='{'ok' if c['ok'] else 'no'}'>{'ok' if c['ok'] else 'FAIL'}</td><td>{_esc(c['name'])}</td>"
        f"<td>{_esc(c['summary'])}"
        + "".join(f"<br><small>note: {_esc(w)}</small>" for w in c.get("warnings", [])[:8])
        + "</td></tr>"
        for c in verdict["checks"]
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(_t0(truth))) if truth.get("started_at") else "?"
    days = ", ".join(f"{d}: {t}" for d, t in plan["titles"].items())
    sections = [
        ("Transfer: latency and throughput", transfer_plots(truth, observed, verdict)),
        ("Completeness per night and exposure", completeness_tables(truth, observed)),
        ("Master calibrations", masters_section(truth, observed)),
        ("Difference imaging and alerts", science_section(truth, observed, verdict)),
        ("Problems and events", timeline_section(truth, observed)),
    ]
    body = "".join(f"<section><h2>{_esc(title)}</h2>{content}</section>" for title, content in sections)
    drill = verdict.get("drill") or {}
    routes = ", ".join(f"{k} {v}" for k, v in (drill.get("routes_during_outage") or {}).items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>skyrelay rehearsal</title>
<style>{CSS}</style></head><body>
<header><h1>skyrelay rehearsal — {plan["days"]} day(s), {_esc(plan["scale"])} scale,
{_esc(plan["instrument"])} ({len(plan["detectors"])} detectors)</h1>
<p>started {started}; seed {plan["seed"]}; wall time {numbers["wall_s"]} s. {_esc(days)}</p></header>
<main id="report">{_verdict_html(verdict)}
<section><h2>Figures</h2>{_cards(numbers)}
<p><small>Network drill: link cut → first file archived by another route {drill.get("failover_s")} s;
restore → first new file by primary {drill.get("failback_s")} s;
files closed during the outage: {drill.get("files_during_outage", 0)} ({_esc(routes)}).</small></p>
<table><tr><th></th><th>check</th><th>result</th></tr>{checks}</table></section>
{body}</main></body></html>"""
    path.write_text(page, encoding="utf-8")
