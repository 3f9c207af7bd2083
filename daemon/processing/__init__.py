"""Processing at the archive: calibration sequences become journaled jobs, run on an executor, into products.

- :mod:`~daemon.processing.scheduler` — :class:`Scheduler`, woken by ingest commits;
- :mod:`~daemon.processing.sequences` — sequences from catalog frames, job specs and keys;
- :mod:`~daemon.processing.executor` — process pool or Dask (:func:`make_executor`);
- :mod:`~daemon.processing.products` — build, place, catalogue and announce a product; reprocess;
- :mod:`~daemon.processing.science` — difference imaging on arrival: calexps, pairing, diffs and alerts;
- :mod:`~daemon.processing.science_tasks` — the science jobs' worker entry points (calexp, diff);
- :mod:`~daemon.processing.http` — ``/v1/products`` for operators.
"""

from daemon.processing.executor import DaskExecutor, Executor, PoolExecutor, WorkerLost, make_executor
from daemon.processing.scheduler import Scheduler

__all__ = ["DaskExecutor", "Executor", "PoolExecutor", "Scheduler", "WorkerLost", "make_executor"]
