"""Shared set-up for the benchmark scripts: run the peer (numpy/scikit-learn) at its best.

This machine sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force a slower
OpenBLAS kernel.  :func:`clean_blas_env` re-executes the calling script once with
both removed (guarded by JNMF_BENCH_REEXEC; ``--keep-blas-env`` skips it), and
:func:`blas_report` says which BLAS kernel numpy then runs (threadpoolctl).  JAX's
CPU backend does not use OpenBLAS, so only the peers are affected.
"""

from __future__ import annotations

import os
import sys
import time

BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
FLAG = "JNMF_BENCH_REEXEC"


def clean_blas_env() -> None:
    """Re-run the current script without the OpenBLAS overrides (once)."""
    if "--keep-blas-env" in sys.argv[1:]:
        sys.argv.remove("--keep-blas-env")
        return
    if os.environ.get(FLAG) == "1" or not any(v in os.environ for v in BLAS_VARS):
        return
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env[FLAG] = "1"
    removed = ", ".join(f"{v}={os.environ[v]}" for v in BLAS_VARS if v in os.environ)
    print(f"[re-executing without {removed}]", flush=True)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def blas_report() -> str:
    """One line per BLAS library numpy loaded: its API, version, kernel and threads."""
    import numpy as np

    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - bench extra not installed
        return "threadpoolctl not installed: BLAS kernel unknown"
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure BLAS is loaded
    lines = []
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            lines.append(
                f"numpy BLAS: {info.get('internal_api')} {info.get('version')} "
                f"kernel={info.get('architecture')} threads={info.get('num_threads')}"
            )
    overrides = [v for v in BLAS_VARS if v in os.environ]
    lines.append(f"OpenBLAS overrides in environment: {overrides or 'none'}")
    return "\n".join(lines)


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    """The shortest time of ``repeats`` calls of ``fn``: wall time (``time.perf_counter``)
    unless ``clock`` says otherwise (``time.process_time``: CPU time, all threads).

    Args:
        fn: what to time (it must block until its work is done, e.g. ``jax.block_until_ready``).
        repeats: the number of calls.
        clock: the clock, a function returning seconds.

    Returns:
        Seconds.
    """
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)
