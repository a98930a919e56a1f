"""Rank survey on Golub ALL/AML: jnmf.consensus against R's NMF package, side by side.

R: ``nmf(esGolub, 2:5, nrun=50, method="brunet", seed=123456)`` on one core
(experiments/golub_survey_R.R; needs Debian's r-cran-nmf).  jnmf: ``jnmf.consensus(Y,
[2, 3, 4, 5], restarts=50, method="kl")``, every (rank, restart) in one compiled program,
with R's stopping rule (clusters stable for 40 iterations, checked every 10).  Prints
the wall times and their ratio (jnmf cold, i.e. compiling included, and warm), the
number of XLA compilations, and cophenetic / dispersion per rank from both.

    python experiments/bench_golub_survey.py [--nrun 50] [--ranks 2 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import jnmf  # noqa: E402


def run_r(lo: int, hi: int, nrun: int) -> tuple[float, dict] | None:
    if shutil.which("Rscript") is None:
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golub_survey_R.R")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run(["Rscript", script, str(lo), str(hi), str(nrun)], capture_output=True, text=True,
                         env=env, check=True).stdout  # fmt: skip
    seconds, ranks = float("nan"), {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "R-seconds":
            seconds = float(parts[1])
        elif parts and parts[0] == "R-rank":
            ranks[int(parts[1])] = (float(parts[2]), float(parts[3]))
    return seconds, ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nrun", type=int, default=50)
    ap.add_argument("--ranks", type=int, nargs=2, default=[2, 5])
    ap.add_argument("--skip-r", action="store_true")
    args = ap.parse_args()
    lo, hi = args.ranks
    Y = np.asarray(jnmf.load_golub().expression, np.float32)
    t = time.perf_counter()
    cold = jnmf.consensus(Y, list(range(lo, hi + 1)), restarts=args.nrun, key=123456)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    warm = jnmf.consensus(Y, list(range(lo, hi + 1)), restarts=args.nrun, key=7)
    t_warm = time.perf_counter() - t
    print(f"jnmf: {hi - lo + 1} ranks x {args.nrun} restarts: cold {t_cold:.1f} s "
          f"({cold.compilations} XLA compilations), warm {t_warm:.1f} s ({warm.compilations})")  # fmt: skip
    r = None if args.skip_r else run_r(lo, hi, args.nrun)
    if r is not None:
        print(f"R NMF (brunet, one core): {r[0]:.1f} s -> jnmf cold {r[0] / t_cold:.1f}x, "
              f"warm {r[0] / t_warm:.1f}x faster")  # fmt: skip
    print(
        f"{'rank':>4} {'coph jnmf':>10} {'coph R':>8} {'disp jnmf':>10} {'disp R':>8}"
        f" {'iters (median/max)':>19}"
    )
    for e in cold:
        cr, dr = r[1].get(e.rank, (np.nan, np.nan)) if r else (np.nan, np.nan)
        its = f"{int(np.median(e.iterations))}/{int(e.iterations.max())}"
        print(f"{e.rank:>4} {e.cophenetic:>10.4f} {cr:>8.4f} {e.dispersion:>10.4f} {dr:>8.4f} {its:>19}")


if __name__ == "__main__":
    main()
