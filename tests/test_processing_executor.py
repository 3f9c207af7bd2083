"""The executors: the same master built in a process pool and on a real Dask LocalCluster is byte-identical.

Real FITS from the calibration simulator (a small detector) in ``tmp_path``; a real
``distributed.LocalCluster`` with one worker process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import blake3_of

from daemon.processing.executor import DaskExecutor, Executor, PoolExecutor
from ops.simulate.calibs import DetectorSpec, write_calib_sequence
from processors.calib import MasterInput, MasterOutcome, MasterSpec, make_master

pytestmark = pytest.mark.timeout(120)


def bias_spec(tmp_path: Path, output: Path) -> MasterSpec:
    """A master-bias spec over five small simulated biases (written once per test directory)."""
    frames = tmp_path / "frames"
    if not frames.exists():
        write_calib_sequence(
            frames,
            instrument="ComCam",
            detector="R22_S11",
            kind="bias",
            n=5,
            dayobs="20250601",
            seq_start=1,
            seed=3,
            spec=DetectorSpec.small(),
        )
    inputs = tuple(
        MasterInput(name=path.name, path=str(path), checksum=blake3_of(path)) for path in sorted(frames.glob("*.fits"))
    )
    return MasterSpec(kind="bias", inputs=inputs, output_path=str(output), provenance={"PRODID": "bias-test"})


async def build(executor: Executor, spec: MasterSpec) -> MasterOutcome:
    """Build one master on ``executor``, then release it."""
    try:
        return await executor.run(make_master, spec)
    finally:
        await executor.close()


async def test_process_pool_and_dask_give_byte_identical_masters(tmp_path: Path) -> None:
    """One spec built in a process pool and on a Dask LocalCluster writes the same bytes and the same statistics."""
    from distributed import LocalCluster

    pool_path, dask_path = tmp_path / "pool.fits", tmp_path / "dask.fits"
    pooled = await build(PoolExecutor(1), bias_spec(tmp_path, pool_path))
    async with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=1, threads_per_worker=1, processes=True, asynchronous=True, dashboard_address=None
    ) as cluster:
        dasked = await build(DaskExecutor(cluster.scheduler_address), bias_spec(tmp_path, dask_path))

    assert pool_path.read_bytes() == dask_path.read_bytes()
    assert blake3_of(pool_path) == blake3_of(dask_path)
    assert pooled.stats == dasked.stats
    assert pooled.frames_used == dasked.frames_used and len(pooled.frames_used) == 5


async def test_a_dask_worker_killed_mid_job_still_yields_the_same_master(tmp_path: Path) -> None:
    """SIGKILL of the Dask worker once the job is submitted: the nanny starts another, the job reruns, and the
    master is byte-identical to the process pool's."""
    import asyncio
    import os
    import signal

    from distributed import Client, LocalCluster

    pool_path, dask_path = tmp_path / "pool.fits", tmp_path / "dask.fits"
    await build(PoolExecutor(1), bias_spec(tmp_path, pool_path))
    async with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=1, threads_per_worker=1, processes=True, asynchronous=True, dashboard_address=None
        ) as cluster,
        Client(cluster.scheduler_address, asynchronous=True) as client,  # type: ignore[no-untyped-call]
    ):
        pids = await client.run(os.getpid)
        executor = DaskExecutor(cluster.scheduler_address)
        job = asyncio.ensure_future(build(executor, bias_spec(tmp_path, dask_path)))
        # The scheduler's own view of which worker holds the job (another process: re-asked, bounded).
        held: dict[str, Any] = {}
        async with asyncio.timeout(30):
            while not any(held.values()):
                await asyncio.sleep(0.005)
                held = await client.processing()
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        outcome = await job

    assert len(outcome.frames_used) == 5
    assert dask_path.read_bytes() == pool_path.read_bytes()
