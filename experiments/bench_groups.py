"""Concurrent groups on CPU: where they start to pay (ORL faces, rank 25, float32).

For each count of fits (``--fits``, default 4 8 16): ``jnmf.batch.run_restarts`` of
accelerated HALS (``"hybrid"``, each fit to relative error 0.1755) as one program
(``groups=1``), in two concurrent groups (``groups=2``), and a Python loop of single
fits; interleaved (the order reversed every other round), median of ``--repeats``,
compile excluded; the load average printed with each line.

    python experiments/bench_groups.py [--fits 4 8 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _bench_env import clean_blas_env

clean_blas_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_orl import TARGET, load_orl, random_start, rule_of  # noqa: E402

from jnmf import fitting as jfit  # noqa: E402
from jnmf.batch import run_restarts  # noqa: E402
from jnmf.driver import Stopping, iterate  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "orl_faces.npz"))
    ap.add_argument("--fits", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    Y = load_orl(args.data)
    k = 25
    target = 0.5 * (TARGET * float(np.linalg.norm(Y.astype(np.float64)))) ** 2
    stop = Stopping(max_iterations=600, tol=0.0, target=target)
    problem = build_problem(jnp.asarray(Y), k)
    rule = jfit.make_rule(rule_of("ahals"))
    L0, R0 = (jnp.asarray(x) for x in random_start(Y, k, 0, max(args.fits)))
    print(f"jax {jax.__version__} on {jax.default_backend()}; load average {os.getloadavg()[0]:.2f}")

    def batched(B, groups):
        res = run_restarts(
            rule, problem, L0[:B], R0[:B], stopping=stop, history_size=1, strategy="hybrid", groups=groups
        )
        return jax.block_until_ready(res)

    def loop(B):
        for i in range(B):
            state = rule.init(problem, L0[i], R0[i])
            jax.block_until_ready(iterate(rule, problem, state, stopping=stop, history_size=1))

    for B in args.fits:
        runs = {"G=1": lambda B=B: batched(B, 1), "G=2": lambda B=B: batched(B, 2)}
        runs["loop"] = lambda B=B: loop(B)
        for fn in runs.values():  # compile
            fn()
        times = {label: [] for label in runs}
        for rep in range(args.repeats):
            for label in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                t = time.perf_counter()
                runs[label]()
                times[label].append(time.perf_counter() - t)
        med = {label: statistics.median(ts) for label, ts in times.items()}
        line = "  ".join(f"{label} {s:.2f} s" for label, s in med.items())
        print(
            f"{B} fits: {line}  G=1/G=2 {med['G=1'] / med['G=2']:.2f}x"
            f"  loop/G=2 {med['loop'] / med['G=2']:.2f}x  load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
