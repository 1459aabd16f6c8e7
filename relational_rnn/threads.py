"""The number of BLAS threads: the one place that sets it.

The matrices of these models are small (rows B x N, a few hundred columns): one BLAS thread per
process is faster than several on the machines measured (IMPLEMENTATION_SUMMARY.md), and
``--workers`` is the way to use more cores.  ``threadpoolctl`` changes the thread count of the
BLAS that NumPy has already loaded, so no environment variable needs setting before NumPy is
imported, and worker processes apply the same limit when they start.
"""
from __future__ import annotations

from threadpoolctl import threadpool_info, threadpool_limits

DEFAULT_THREADS = 1


def limit_blas_threads(threads: int | None = DEFAULT_THREADS) -> None:
    """Run BLAS on ``threads`` threads in this process from now on (None or 0: leave the BLAS
    library's own default)."""
    if threads:
        threadpool_limits(limits=int(threads), user_api="blas")


def blas_threads() -> int | None:
    """The thread count of the BLAS that NumPy uses (None if none is found)."""
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None
