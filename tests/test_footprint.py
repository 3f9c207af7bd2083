"""The daemon's own footprint: what a site imports to run (processors run in workers, not in the daemon)."""

from __future__ import annotations

import subprocess
import sys


def test_a_site_daemon_runs_without_the_image_processing_stack() -> None:
    """Importing everything a site runs (archive included) loads neither scipy nor the difference-imaging
    processors: each would add tens of MiB to every daemon's RSS (scipy alone about 50 MiB), and the
    processors run in the executor's worker processes."""
    code = (
        "import sys, daemon.site, daemon.processing.http, daemon.processing.science, daemon.processing.products;"
        "print(sorted(m for m in ('scipy', 'processors.diffim', 'photutils', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
