"""The ``[processing]`` section: defaults, valid settings, and every problem reported at once."""

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


def test_without_the_section_the_defaults_apply(tmp_path: Path) -> None:
    """No ``[processing]``: a local process pool, quiet after 600 s, 3 frames at least, 2 workers."""
    assert load_topology(write(tmp_path, ""), check_dirs=False).processing == Processing()


def test_the_settings_are_read(tmp_path: Path) -> None:
    """A Dask scheduler address, quiet time, minimum frames and workers are taken as given."""
    extra = '[processing]\ndask_scheduler = "tcp://10.0.0.5:8786"\nquiet_s = 30\nmin_frames = 5\nworkers = 4\n'
    processing = load_topology(write(tmp_path, extra), check_dirs=False).processing
    assert processing == Processing(dask_scheduler="tcp://10.0.0.5:8786", quiet_s=30.0, min_frames=5, workers=4)


def test_every_problem_of_the_section_is_reported_at_once(tmp_path: Path) -> None:
    """A bad address, a negative quiet time, zero workers and an unknown key are all listed in one error."""
    extra = '[processing]\ndask_scheduler = "localhost"\nquiet_s = -1\nworkers = 0\nthreads = 2\n'
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, extra), check_dirs=False)
    text = str(caught.value)
    for expected in ("processing.dask_scheduler", "processing.quiet_s", "processing.workers", "processing.threads"):
        assert expected in text
