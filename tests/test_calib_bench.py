"""The processing benchmark runs end to end on tiny frames (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits

from ops.bench.processing import run_processing_bench


def test_small_bench_builds_both_masters_with_both_tools(tmp_path: Path) -> None:
    """A tiny bench writes frames, builds bias and flat masters with ours and ccdproc, and reports both."""
    result = run_processing_bench(tmp_path, bias_frames=4, flat_frames=3, full_size=False)
    rows = result["rows"]
    assert isinstance(rows, list) and [r["master"] for r in rows] == ["bias", "flat"]
    for row in rows:
        assert row["ours_s"] > 0 and row["ccdproc_s"] > 0 and row["ours_cpu_s"] > 0 and row["ccdproc_cpu_s"] > 0
        assert row["ours_peak_mib"] > 0 and row["ccdproc_peak_mib"] > 0
        assert row["verdict"] in {"PASS", "MISS"}
    for name in ("ours_bias", "ours_flat", "ccdproc_bias", "ccdproc_flat"):
        with fits.open(tmp_path / "products" / f"{name}.fits") as hdul:
            data = hdul["IMAGE"].data if name.startswith("ours") else hdul[0].data
            assert data.shape == (128, 128)
    assert "ratio" in str(result["table"])
