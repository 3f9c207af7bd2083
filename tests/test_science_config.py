"""The science keys of ``[processing]``: ``max_fwhm_arcsec`` and ``chunk_end_s``, read and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import VALID

from daemon.config import Processing, load_topology
from daemon.errors import TopologyError


def write(tmp_path: Path, extra: str) -> Path:
    """A valid topology plus ``extra``."""
    path = tmp_path / "topology.toml"
    path.write_text(VALID + "\n" + extra)
    return path


def test_the_science_settings_are_read_over_the_defaults(tmp_path: Path) -> None:
    """Defaults 2.0 arcsec and 5400 s (Pan-STARRS' 1.5 h); given values are taken as floats."""
    assert (Processing().max_fwhm_arcsec, Processing().chunk_end_s) == (2.0, 5400.0)
    extra = "[processing]\nmax_fwhm_arcsec = 1.5\nchunk_end_s = 30\n"
    processing = load_topology(write(tmp_path, extra), check_dirs=False).processing
    assert (processing.max_fwhm_arcsec, processing.chunk_end_s) == (1.5, 30.0)


def test_non_positive_science_settings_are_both_reported(tmp_path: Path) -> None:
    """A zero FWHM limit and a boolean chunk end are listed in one error."""
    extra = "[processing]\nmax_fwhm_arcsec = 0\nchunk_end_s = true\n"
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, extra), check_dirs=False)
    assert "processing.max_fwhm_arcsec" in str(caught.value) and "processing.chunk_end_s" in str(caught.value)
