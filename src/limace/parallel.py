"""Where independent tasks run: local processes (one per core by default) or a Dask cluster.

Both executors have the same small interface (``submit``, ``as_completed``, ``result``, ``close``), so a job
(labelling, screening) runs unchanged on a laptop or on a SLURM cluster through dask-jobqueue.
"""

from __future__ import annotations

import os


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to end this worker when the job process dies (kill -9 of the
    job must not leave orphans computing results nobody will write)."""
    import signal
    import sys
    import warnings

    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")  # e3nn 0.4.4 on torch >= 2.6

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Executor:
    """What the two executors share: futures with ``result()`` and concurrent.futures' ``as_completed``."""

    def as_completed(self, futures):
        from concurrent.futures import as_completed

        return as_completed(futures)

    @staticmethod
    def result(fut):
        return fut.result()


class LocalExecutor(_Executor):
    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_die_with_parent)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def close(self, cancel: bool = False):
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


class DaskExecutor(_Executor):
    def __init__(self, address: str):
        from distributed import Client

        self.client = Client(address)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(futures)

    def close(self, cancel: bool = False):
        self.client.close()


def make_executor(workers: int = 1, scheduler: str | None = None):
    """A Dask executor for a scheduler address, local processes for ``workers > 1``, else None (run inline)."""
    if scheduler:
        return DaskExecutor(scheduler)
    if workers > 1:
        return LocalExecutor(workers)
    return None
