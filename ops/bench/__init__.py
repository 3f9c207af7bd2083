"""``skyrelay bench``: push real FITS files through a fresh cluster and compare with rsync and the disk.

Every workload runs on a FRESH one-machine cluster (:class:`ops.cluster.Cluster`) in its own directory
under one run directory, and the same files are used for skyrelay and for the baselines:

- **direct** / **primary**: one LSSTCam-sized exposure (197 files x 20 MB by default) renamed into the
  summit inbox all at once, one hop (summit -> archive) or two (summit -> base -> archive);
  throughput = bytes / (last arrival notice - first rename).
- **https**: the direct exposure again with every data server speaking HTTPS (a throwaway CA made with
  openssl): what TLS on the pulls costs.
- **idle**: files renamed one at a time, each after the previous one's notice: close -> notice latency
  of an otherwise idle system.
- **small**: a stream of small files (500 x ~100 KB by default): files/s, MB/s and latency.
- **cpu**: CPU used by each daemon over an idle window once the small stream has settled.
- **headers**: :func:`measure_verify_us`, the mean time of :func:`processors.headers.verify_header`.

Baselines, measured in the same run on the same disk: ``rsync -a --whole-file --fsync`` over loopback to
an rsync daemon (the same files as direct/primary), and ``dd conv=fdatasync`` (the disk's durable-write
limit). Latency is measured as a subscriber sees it: from the file's mtime at the summit (set to "now"
just before its rename, as a camera closing the file would) to the moment the arrival notice reaches an
MQTT client subscribed to the archive broker.

Files are pre-generated before any timer starts; a workload's files are hard links to them, so every
workload moves identical bytes and nothing is copied inside a timed section.

The targets (from the design issue) are reported beside the figures with PASS/MISS; they are not
assertions and do not change the exit status.

The package: :mod:`~ops.bench.cli` (options and entry point), :mod:`~ops.bench.run` (one run and its
report), :mod:`~ops.bench.workloads`, :mod:`~ops.bench.baselines`, :mod:`~ops.bench.arrivals` (the
notice subscriber), :mod:`~ops.bench.files`, :mod:`~ops.bench.measure` (CPU, RSS, percentiles),
:mod:`~ops.bench.headers` and :mod:`~ops.bench.report` (targets and the table).
"""

from __future__ import annotations

from ops.bench.cli import add_bench_arguments, bench_main
from ops.bench.config import BenchConfig
from ops.bench.errors import BenchError
from ops.bench.headers import measure_verify_us
from ops.bench.run import run_bench

__all__ = ["BenchConfig", "BenchError", "add_bench_arguments", "bench_main", "measure_verify_us", "run_bench"]
