"""How a serving process lets numpy use the CPU.

numpy's OpenBLAS keeps a pool of threads, one per core, and after every matrix product they
spin (sched_yield) waiting for the next one. A Recommend call does a few small products
(MMR over 300 × 384 embeddings, similarity to the recent items); each left the second thread
spinning for milliseconds on the core Postgres and Triton need. In-process, 200 sequential
Recommend calls (2026-12-06, /tmp probe over the Home Depot + Scientific stack): the engine's
process used 30.0 ms of CPU a call, 16.4 ms of it system time, with the pool; 13.2 ms (1.3
ms system) with one thread, at the same latency. At these sizes a second thread gains nothing.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def one_blas_thread() -> None:
    """For the rest of the process: BLAS runs on the calling thread alone (OpenMP, which
    onnxruntime and LightGBM use, is left as it is)."""
    threadpool_limits(limits=1, user_api="blas")
