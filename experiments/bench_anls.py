"""ANLS (exact BPP half steps) vs HALS, before vs after the batched-Cholesky solver, in one run.

For scikit-learn's digits (1797 x 64, rank 16) and ORL faces (10304 x 400, rank 25):

* ms per iteration and time to a fixed relative error, for ``hals``, ``ahals``, ``anls``
  (the current solver) and ``anls-before`` (the solver of commit 1d564a9: one LU solve
  per problem per pass over all problems, run fit by fit under vmap);
* restarts: ``run_restarts`` (plain ``jax.vmap`` over 8 and 32 fits) vs a Python loop of
  single jitted fits, for ``anls`` and ``anls-before``.

Run:  python experiments/bench_anls.py [--data ../shared/data/orl_faces.npz] [--quick]
Timings are best-of-N (the CPU is noisy); compile time is excluded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from _bench_env import best_time

from jnmf import fitting as jfit
from jnmf.batch import run_restarts
from jnmf.driver import iterate
from jnmf.quadratic import half_problem_L, half_problem_R, objective_after_R_step
from jnmf.rnnmf import build_problem
from jnmf.rules.anls import ANLS, half_problem_qp
from jnmf.rules.base import NMFState, StepInfo, max_abs

BEFORE = "1d564a9"  # last commit with the old solver


def _old_nnls():
    """The old jnmf.nnls, loaded from git (so this script needs the repository)."""
    root = os.path.join(os.path.dirname(__file__), "..")
    src = subprocess.run(
        ["git", "show", f"{BEFORE}:jnmf/nnls.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    mod = types.ModuleType("nnls_before")
    sys.modules["nnls_before"] = mod  # equinox's dataclasses look their module up
    exec(compile(src, "nnls_before.py", "exec"), mod.__dict__)
    return mod


class ANLSBefore(ANLS):
    """ANLS with the old half step (its own class, so jit caches never mix the two)."""

    def step(self, problem, state):
        from _fitwise_legacy import fitwise

        old = _OLD.nnls_bpp

        def half(hp, Xt, max_iter, ridge):
            def solve(hp, Xt, max_iter, ridge):
                Q, C = half_problem_qp(hp)
                return old(Q, C, Xt.T, max_iter=max_iter, ridge=ridge).x.T

            return fitwise(solve)(hp, Xt, max_iter, ridge)

        Lt, R = state.Lt, state.R
        ridge = self.ridge.astype(Lt.dtype)
        Lt_new = half(half_problem_L(problem, Lt, R), Lt, self.max_nnls_iter, ridge)
        hp_R = half_problem_R(problem, Lt_new, R)
        R_new = half(hp_R, R, self.max_nnls_iter, ridge)
        info = StepInfo(
            steps=jnp.stack([max_abs(Lt_new - Lt), max_abs(R_new - R)]),
            objective=objective_after_R_step(problem, hp_R, Lt_new, R_new),
            stuck=jnp.zeros((), bool),
        )
        return NMFState(Lt_new, R_new), info


_OLD = _old_nnls()
RULES = {
    "hals": lambda: jfit.make_rule("hals"),
    "ahals": lambda: jfit.make_rule("ahals"),
    "anls": lambda: ANLS(),
    "anls-before": lambda: ANLSBefore(),
}


def random_start(Y, k, seed, restarts=None):
    rng = np.random.default_rng(seed)
    s = np.sqrt(Y.mean() / k)
    shape = () if restarts is None else (restarts,)
    L = np.abs(rng.standard_normal((*shape, Y.shape[0], k))) * s
    R = np.abs(rng.standard_normal((*shape, k, Y.shape[1]))) * s
    return jnp.asarray(L, jnp.float32), jnp.asarray(R, jnp.float32)


def run(rule, problem, L0, R0, iters, history=1):
    opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=history)
    return iterate(rule, problem, rule.init(problem, L0, R0), **opts)


def per_iteration_and_target(name, Y, k, target, cap, repeats):
    print(f"\n== {name} {Y.shape[0]}x{Y.shape[1]}, rank {k}: one fit, target rel. error {target} ==")
    problem = build_problem(jnp.asarray(Y), k)
    L0, R0 = random_start(Y, k, 0)
    norm = float(np.linalg.norm(Y))
    rows = {}
    for method, make in RULES.items():
        rule = make()
        n_it = 20
        jax.block_until_ready(run(rule, problem, L0, R0, n_it).L)
        t_it = best_time(lambda: jax.block_until_ready(run(rule, problem, L0, R0, n_it).L), repeats) / n_it
        res = run(rule, problem, L0, R0, cap, history=cap)
        err = np.sqrt(np.maximum(2 * np.asarray(res.history, np.float64), 0)) / norm
        hits = np.nonzero(err <= target)[0]
        if hits.size:
            n = int(hits[0]) + 1
            jax.block_until_ready(run(rule, problem, L0, R0, n).L)
            t_target = best_time(lambda: jax.block_until_ready(run(rule, problem, L0, R0, n).L), repeats)
        else:
            n, t_target = None, float("nan")
        rows[method] = (t_it, n, t_target)
    hals = rows["hals"]
    print(f"{'method':<12} {'ms/iter':>8} {'x hals':>7} {'iters':>6} {'s to target':>12} {'x hals':>7}")
    for method, (t_it, n, tt) in rows.items():
        line = f"{method:<12} {t_it * 1e3:>8.2f} {t_it / hals[0]:>7.1f} {str(n):>6} "
        print(line + f"{tt:>12.3f} {tt / hals[2]:>7.1f}")
    b, a = rows["anls-before"], rows["anls"]
    print(f"anls after vs before: {b[0] / a[0]:.1f}x per iteration, {b[2] / a[2]:.1f}x to target")


def restarts(name, Y, k, counts, iters, repeats):
    print(f"\n== {name}, rank {k}: {iters} iterations, jax.vmap over restarts vs a loop of single fits ==")
    problem = build_problem(jnp.asarray(Y), k)
    opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=1)
    print(f"{'method':<12} {'fits':>5} {'vmap s':>8} {'loop s':>8} {'loop/vmap':>10}")
    for method in ("anls", "anls-before", "hals"):
        rule = RULES[method]()
        for B in counts:
            L0, R0 = random_start(Y, k, 1, B)

            def batched(rule=rule, L0=L0, R0=R0):
                return jax.block_until_ready(run_restarts(rule, problem, L0, R0, **opts).L)

            def loop(rule=rule, L0=L0, R0=R0, B=B):
                for i in range(B):
                    out = iterate(rule, problem, rule.init(problem, L0[i], R0[i]), **opts)
                return jax.block_until_ready(out.L)

            batched(), loop()
            tb, tl = best_time(batched, repeats), best_time(loop, repeats)
            print(f"{method:<12} {B:>5} {tb:>8.3f} {tl:>8.3f} {tl / tb:>9.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/orl_faces.npz")
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats; ORL restarts only with 8 fits")
    args = ap.parse_args()
    from sklearn.datasets import load_digits

    repeats = 2 if args.quick else 3
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    digits = load_digits().data.astype(np.float32)
    images = np.load(args.data)["images"]
    orl = (images.reshape(images.shape[0], -1).T / 255.0).astype(np.float32)
    per_iteration_and_target("digits", digits, 16, 0.40, 300, repeats)
    per_iteration_and_target("ORL", orl, 25, 0.1755, 300, repeats)
    restarts("digits", digits, 16, (8, 32), 50, repeats)
    restarts("ORL", orl, 25, (8,) if args.quick else (8, 32), 10, 1 if args.quick else repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
