"""Which batching strategy is faster for each rule: the measurement behind
``jnmf.batch.batching_strategy``.

For each method, B restarts run for a fixed number of iterations (no early stop)
three ways, in one run:

* ``vmap``: ``run_restarts(..., strategy="vmap")``, one loop over all fits, products
  with Y stacked over the fits;
* ``map``: ``run_restarts(..., strategy="map")``, ``lax.map`` over fits in one program;
* ``loop``: a Python loop of B single ``jnmf.driver.iterate`` fits (compiled once).

Times are best-of-``--repeats`` after a warm-up (compile excluded; compile times are
printed separately).  Ratios > 1 mean the batched program beats the loop.

    python experiments/bench_batching.py --data orl --restarts 8 32 --iterations 20
    python experiments/bench_batching.py --data digits --rank 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _bench_env import best_time  # noqa: E402

from jnmf.batch import run_restarts  # noqa: E402
from jnmf.driver import Stopping, iterate  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.rules import METHODS, make_rule  # noqa: E402


def load(name: str) -> np.ndarray:
    if name == "orl":
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "shared", "data", "orl_faces.npz")
        with np.load(path) as d:
            X = d[d.files[0]]
        X = X.reshape(X.shape[0], -1) if X.ndim == 3 else X
        Y = X.astype(np.float32)
        if Y.shape[0] < Y.shape[1]:
            Y = Y.T  # pixels x images
        return Y / Y.max()
    from sklearn.datasets import load_digits

    return (load_digits().data.T / 16.0).astype(np.float32)  # 64 pixels x 1797 images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["orl", "digits"], default="orl")
    ap.add_argument("--rank", type=int, default=25)
    ap.add_argument("--restarts", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=sorted(METHODS))
    args = ap.parse_args()

    Y = load(args.data)
    m, n = Y.shape
    print(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs); data "
          f"{args.data} {m} x {n}, rank {args.rank}, {args.iterations} iterations per fit, "
          f"best of {args.repeats}")  # fmt: skip
    problem = build_problem(jnp.asarray(Y), args.rank)
    stop = Stopping(max_iterations=args.iterations, tol=0.0, min_xstep=0.0)
    rng = np.random.default_rng(0)
    print(f"{'method':>6} {'B':>3} {'vmap s':>8} {'map s':>8} {'loop s':>8} {'loop/vmap':>9} {'loop/map':>9}"
          f" {'compile vmap/map/one':>21}")  # fmt: skip
    for method in args.methods:
        rule = make_rule(method)
        for B in args.restarts:
            s = np.sqrt(Y.mean() / args.rank)
            L0 = jnp.asarray(np.abs(rng.standard_normal((B, m, args.rank))) * s, jnp.float32)
            R0 = jnp.asarray(np.abs(rng.standard_normal((B, args.rank, n))) * s, jnp.float32)

            def batched(strategy):
                res = run_restarts(rule, problem, L0, R0, stopping=stop, history_size=1, strategy=strategy)
                return jax.block_until_ready(res.L)

            def loop():
                for i in range(B):
                    res = iterate(
                        rule, problem, rule.init(problem, L0[i], R0[i]), stopping=stop, history_size=1
                    )
                    jax.block_until_ready(res.R)

            compile_times = []
            for fn in (lambda: batched("vmap"), lambda: batched("map"), loop):
                t = time.perf_counter()
                fn()
                compile_times.append(time.perf_counter() - t)
            tv = best_time(lambda: batched("vmap"), args.repeats)
            tm = best_time(lambda: batched("map"), args.repeats)
            tl = best_time(loop, args.repeats)
            ct = "/".join(f"{c:.1f}" for c in compile_times)
            row = f"{method:>6} {B:>3} {tv:>8.3f} {tm:>8.3f} {tl:>8.3f} {tl / tv:>9.2f} {tl / tm:>9.2f}"
            print(f"{row} {ct:>21}", flush=True)


if __name__ == "__main__":
    main()
