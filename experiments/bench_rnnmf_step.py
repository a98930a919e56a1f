"""Time jnmf.murnmf and jnmf.aurnmf per iteration on a 1000 x 500, rank-10 problem.

Y = L R with L (1000 x 10) and R (10 x 500) uniform random; the fits start from a
strictly positive uniform random (L0, R0) of rank 10 and run ``--iterations``
iterations with ``min_xstep=0`` (so they never stop early).  Each method is
compiled once (warm-up), then timed ``--repeats`` times with ``block_until_ready``,
round-robin with the NumPy peer.

Per-iteration figures reported (best of the repeats is the headline; the median is shown too):

* ``total / n``: the whole front-door call (input checks, building the problem,
  the compiled loop) divided by the number of iterations;
* ``marginal``: (t(2n) - t(n)) / n, the cost of one more iteration, free of the
  fixed per-call overhead (``max_iterations`` is traced, so 2n does not recompile).

Peers: R, measured side by side when ``Rscript`` is on the PATH (Debian's
``r-base-core``): experiments/rnnmf_peer.R runs Algorithms 1 and 3 written in plain R
from the paper with the dense operations rnnmf performs per iteration (the rnnmf
package itself is not in Debian; the transcription does no more work than rnnmf, so it
can only flatter R).  Without R, rnnmf's figure is quoted (3.8-4.2 ms per iteration
measured with rnnmf 0.3.0 and R 4.2 on this machine kind).  A plain NumPy implementation of the same
MURNMF iteration (Algorithm 1 with no penalties: the two multiplicative half steps,
the max-abs steps and the objective, as jnmf computes them) is measured side by
side, in the same process and dtype, on numpy's OpenBLAS.

OpenBLAS: this machine sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force a
slower kernel; the script re-executes itself once with both removed (guarded by
JNMF_BENCH_REEXEC; ``--keep-blas-env`` skips this, for comparison; see _bench_env.py) and prints the
kernel numpy uses (threadpoolctl).  JAX's CPU backend does not use OpenBLAS (XLA
has its own matrix multiply), so only the NumPy peer is affected.

Usage::

    pip install -e .[bench]
    python experiments/bench_rnnmf_step.py [--iterations 200] [--repeats 7] [--float32] [--keep-blas-env]
"""

from __future__ import annotations

import os
import sys

from _bench_env import blas_report, clean_blas_env

if __name__ == "__main__":
    clean_blas_env()

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

R_MS_PER_ITERATION = 3.8  # rnnmf 0.3.0 murnmf in R 4.2, quoted (used only when Rscript is missing)


def r_peer(seed: int, iterations: int, repeats: int) -> dict[str, float] | None:
    """Best ms/iteration of the R transcription (rnnmf_peer.R), or None without Rscript."""
    import shutil
    import subprocess

    if shutil.which("Rscript") is None:
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rnnmf_peer.R")
    cmd = ["Rscript", script, str(M), str(N), str(K), str(iterations), str(repeats), str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        name, *rest = line.split()
        if name == "R-blas":
            print(f"R BLAS: {' '.join(rest)}")
        elif name == "rnnmf-version":
            print(f"rnnmf package {rest[0]} (R_LIBS={os.environ.get('R_LIBS', '')})")
        else:
            res[name] = float(rest[0])
    return res


M, N, K = 1000, 500, 10


def numpy_murnmf(Y, L, R, iterations: int, epsilon: float = 1e-7):
    """MURNMF (Pav 2024, Algorithm 1) with no weights or penalties, in NumPy.

    L <- L (.) max(Y R', eps) (/) (L R R'), then R' <- R' (.) max(Y' L, eps) (/) (R' L'L)
    (eqs. 14 and 19; elements with a non-positive denominator are left unchanged).
    Like jnmf it also computes each iteration's max-abs steps and the objective
    1/2 ||Y - LR||_F^2 from the R half problem.  Returns (L, R, objective, steps).
    """
    import numpy as np

    Yt = np.ascontiguousarray(Y.T)
    half_norm = 0.5 * float(np.sum(Y * Y))
    Rt = np.ascontiguousarray(R.T)
    objective, steps = np.nan, (np.inf, np.inf)
    for _ in range(iterations):
        num = np.maximum(Y @ Rt, epsilon)  # -min(d, -eps) with d = -Y R'
        den = L @ (Rt.T @ Rt)
        ok = den > 0
        L_new = np.where(ok, L * num / np.where(ok, den, 1.0), L)
        YtL = Yt @ L_new
        G = L_new.T @ L_new
        num = np.maximum(YtL, epsilon)
        den = Rt @ G
        ok = den > 0
        Rt_new = np.where(ok, Rt * num / np.where(ok, den, 1.0), Rt)
        objective = 0.5 * np.sum(Rt_new * (Rt_new @ G)) - np.sum(Rt_new * YtL) + half_norm
        steps = (np.max(np.abs(L_new - L)), np.max(np.abs(Rt_new - Rt)))
        L, Rt = L_new, Rt_new
    return L, Rt.T, objective, steps


def _time(fn, repeats: int, settle: float = 0.3) -> list[float]:
    """Wall times of ``repeats`` calls.  Each call is preceded by a short sleep: after a
    call, OpenBLAS's and XLA's worker threads keep spinning for a while (~0.1 s), and on a
    2-core machine they would slow down whichever method runs next."""
    out = []
    for _ in range(repeats):
        time.sleep(settle)
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="iterations per timed fit (default 200)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per method (default 7)")
    parser.add_argument("--float32", action="store_true", help="run in float32 (default float64, as R)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    if not args.float32:
        jax.config.update("jax_enable_x64", True)  # float64, to match R's doubles
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import jnmf

    dtype = np.float32 if args.float32 else np.float64
    n_it, reps = args.iterations, args.repeats

    print(f"python {platform.python_version()}, numpy {np.__version__}, jax {jax.__version__}, "
          f"jnmf {jnmf.__version__}; {os.cpu_count()} CPU(s), jax devices {jax.devices()}")  # fmt: skip
    print(blas_report())
    print(f"problem: Y = L R, {M} x {N}, rank {K}, dtype {np.dtype(dtype).name}; {n_it} iterations per fit "
          f"(min_xstep=0), {reps} timed repeats after a warm-up")  # fmt: skip

    rng = np.random.default_rng(args.seed)
    Y = (rng.random((M, K)) @ rng.random((K, N))).astype(dtype)
    L0 = (1.0 - rng.random((M, K))).astype(dtype)
    R0 = (1.0 - rng.random((K, N))).astype(dtype)
    Yj, L0j, R0j = jnp.asarray(Y), jnp.asarray(L0), jnp.asarray(R0)

    def jax_fit(fit, n):
        res = fit(Yj, L0j, R0j, max_iterations=n, min_xstep=0.0)
        jax.block_until_ready(res)
        assert int(res.iterations) == n, (int(res.iterations), n)
        return res

    # Warm up (compile) every method, then time them round-robin so that bursts of load from
    # other users of the machine hit all methods alike (with a pause before each call, see _time).
    methods = {
        "jnmf.murnmf": lambda n: jax_fit(jnmf.murnmf, n),
        "jnmf.aurnmf": lambda n: jax_fit(jnmf.aurnmf, n),
        "numpy MURNMF": lambda n: numpy_murnmf(Y, L0, R0, n),
    }
    results, compile_s = {}, {}
    for name, run in methods.items():
        t0 = time.perf_counter()
        results[name] = run(n_it)  # warm-up: compiles the JAX loop
        compile_s[name] = time.perf_counter() - t0 if name.startswith("jnmf") else 0.0
        run(2 * n_it)  # same compiled loop (max_iterations is traced)
    t1 = {name: [] for name in methods}
    t2 = {name: [] for name in methods}
    for _ in range(reps):
        for name, run in methods.items():
            t1[name] += _time(lambda run=run: run(n_it), 1)
            t2[name] += _time(lambda run=run: run(2 * n_it), 1)
    # Best-of-repeats is the headline (load from other users only ever adds time); the median
    # is shown beside it.
    rows = []  # (name, best ms/it, median ms/it, marginal ms/it, compile s)
    for name in methods:
        best = 1e3 * min(t1[name]) / n_it
        median = 1e3 * statistics.median(t1[name]) / n_it
        marginal = 1e3 * (min(t2[name]) - min(t1[name])) / n_it
        rows.append((name, best, median, marginal, compile_s[name]))
    np_best = rows[-1][1]
    r_ms = r_peer(args.seed, n_it, reps)
    if r_ms is not None:
        print(f"R peer (rnnmf_peer.R, measured now): murnmf {r_ms['R-murnmf']:.3f} ms/it, "
              f"aurnmf {r_ms['R-aurnmf']:.3f} ms/it")  # fmt: skip
        r_ref = {"jnmf.murnmf": r_ms["R-murnmf"], "jnmf.aurnmf": r_ms["R-aurnmf"]}
        if "rnnmf-murnmf" in r_ms:  # the rnnmf package itself: the reference the goal names
            print(f"rnnmf package (measured now): murnmf {r_ms['rnnmf-murnmf']:.3f} ms/it, "
                  f"aurnmf {r_ms['rnnmf-aurnmf']:.3f} ms/it")  # fmt: skip
            r_ref = {"jnmf.murnmf": r_ms["rnnmf-murnmf"], "jnmf.aurnmf": r_ms["rnnmf-aurnmf"]}
    else:
        r_ref = {}
    np_res = results["numpy MURNMF"]

    # The NumPy peer must follow the same iterates as jnmf.murnmf.
    mu = results["jnmf.murnmf"]
    rel = np.max(np.abs(np.asarray(mu.L @ mu.R) - np_res[0] @ np_res[1])) / np.max(np.abs(Y))
    obj_j, obj_n = float(mu.objective), float(np_res[2])
    print(f"check: jnmf.murnmf vs numpy after {n_it} iterations: max |LR diff| / max|Y| = {rel:.1e}, "
          f"objective {obj_j:.6e} vs {obj_n:.6e}")  # fmt: skip

    print()
    head = (f"{'method':<14}{'ms/it best':>12}{'ms/it median':>14}{'ms/it marginal':>16}"
            f"{'vs R':>13}{'vs numpy MU':>13}{'compile s':>11}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, best, median, marginal, comp_s in rows:
        comp = f"{comp_s:.2f}" if comp_s else "-"
        vs_r, vs_np = r_ref.get(name, R_MS_PER_ITERATION) / best, np_best / best
        print(f"{name:<14}{best:>12.3f}{median:>14.3f}{marginal:>16.3f}"
              f"{f'{vs_r:.1f}x':>13}{f'{vs_np:.2f}x':>13}{comp:>11}")  # fmt: skip
    print(
        f"\nms/it best = fastest of {reps} repeats of a {n_it}-iteration call / {n_it} (the whole\n"
        "front-door call);"
        f" median = median repeat / {n_it}; marginal = (best t({2 * n_it}) - best t({n_it})) / {n_it}.\n"
        "'vs R' = the R peer's best ms/iteration of the same algorithm (measured above: the rnnmf\n"
        "package when R_LIBS holds it, else the plain-R transcription) / best; without Rscript,\n"
        "rnnmf's quoted 3.8 ms.\n"
        "'vs numpy MU' = numpy MURNMF best / this row's best, measured side by side here (> 1: faster\n"
        "than NumPy). The machine is shared: compare runs by 'best', and expect noise in the median."
    )


if __name__ == "__main__":
    main()
