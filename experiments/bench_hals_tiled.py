"""Tiled HALS sweeps (jnmf/rules/hals_sweeps.py) against the untiled sweeps they replace.

Side by side in one run, on ORL faces (10304 x 400, rank 25, float32):

* ``target``: time for ``method="ahals"`` to reach relative error <= 0.1755 from one
  shared random start, tiled ("after") and untiled ("before"), vs scikit-learn
  ``NMF(solver="cd")`` from the same start.  Goal: jnmf <= 0.10x scikit-learn.
* ``sweeps``: the sweeps alone, for both half problems (L: 25 x 10304, 4 sweeps; R:
  25 x 400, up to 85 sweeps with the early exit), one fit and batches of 4 and 32 fits:
  untiled, tiled per fit, tiled under ``lax.map`` over fits, tiled under plain ``vmap``
  (tiles of shape (B, k, tile)), for several tile sizes; compile times.
* ``restarts``: 32 (and 4) restarts of ahals: ``run_restarts`` (vmapped driver) vs a
  loop of single fits, with the sweeps run (a) vmapped tiled, (b) ``lax.map`` over fits
  (tiled), (c) the untiled sweeps under ``lax.map`` (before).  Goal: batched >= 1.5x loop.

Run:  python experiments/bench_hals_tiled.py --data ../shared/data/orl_faces.npz
The script re-executes itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE so that
scikit-learn runs on numpy's best OpenBLAS kernel (printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench_env import blas_report, clean_blas_env

clean_blas_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _fitwise_legacy import fitwise  # noqa: E402
from bench_orl import TARGET, best_time, load_orl, random_start, rel_err, sk_iterations_to_target, sk_nmf  # noqa: E402

from jnmf.batch import run_restarts  # noqa: E402
from jnmf.driver import iterate  # noqa: E402
from jnmf.quadratic import half_problem_L, half_problem_R, objective_after_R_step  # noqa: E402
from jnmf.rnnmf import build_problem  # noqa: E402
from jnmf.rules.base import NMFState, StepInfo, max_abs  # noqa: E402
from jnmf.rules.hals import HALS  # noqa: E402
from jnmf.rules.hals_sweeps import TILE, hals_sweeps  # noqa: E402


def untiled_sweeps(hp, Xt, max_sweeps, delta):
    """The sweeps before tiling (jnmf/rules/hals.py at 1d564a9), for comparison."""
    k = Xt.shape[0]
    mixing, others = hp.split_terms()
    curvature = hp.block_majorizer()

    def sweep(Xt):
        def update(j, Xt):
            g = mixing[j] @ Xt
            for p_side, B in others:
                g = g + p_side.right((B[j] @ Xt)[None, :])[0]
            g = g + hp.linear[j]
            c = curvature[j]
            row = Xt[j]
            new = jnp.where(c > 0, jnp.maximum(row - g / jnp.where(c > 0, c, 1.0), 0.0), row)
            return Xt.at[j].set(new)

        return jax.lax.fori_loop(0, k, update, Xt)

    X1 = sweep(Xt)
    if max_sweeps <= 1:
        return X1
    first = jnp.sum((X1 - Xt) ** 2)

    def cond(c):
        return (c[0] < max_sweeps) & (c[2] > delta**2 * first)

    def body(c):
        X_new = sweep(c[1])
        return c[0] + 1, X_new, jnp.sum((X_new - c[1]) ** 2)

    return jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), X1, first))[1]


def lax_map_sweeps(sweeps):
    """Under vmap: lax.map over fits (the pre-v2 per-fit loop); unbatched: ``sweeps`` itself."""

    def run(hp, Xt, n, delta):
        return fitwise(lambda hp, Xt, delta: sweeps(hp, Xt, n, delta))(hp, Xt, delta)

    return run


class VariantHALS(HALS):
    """Accelerated HALS whose half steps call the sweep function named by ``variant``
    (a distinct class per variant, so that jit caches never mix them)."""

    def step(self, problem, state):
        sweeps = SWEEPS[self.variant]
        Lt, R = state.Lt, state.R
        k, m = Lt.shape
        n = R.shape[1]
        delta = self.delta.astype(Lt.dtype)
        Lt_new = sweeps(half_problem_L(problem, Lt, R), Lt, self._sweeps(m, n, k), delta)
        hp_R = half_problem_R(problem, Lt_new, R)
        R_new = sweeps(hp_R, R, self._sweeps(n, m, k), delta)
        info = StepInfo(
            steps=jnp.stack([max_abs(Lt_new - Lt), max_abs(R_new - R)]),
            objective=objective_after_R_step(problem, hp_R, Lt_new, R_new),
            stuck=jnp.zeros((), bool),
        )
        return NMFState(Lt_new, R_new), info


SWEEPS = {
    "untiled, lax.map (before)": lax_map_sweeps(untiled_sweeps),
    "tiled, lax.map (after)": lax_map_sweeps(hals_sweeps),
    "tiled, vmap": hals_sweeps,
}
RULES = {}
for _i, _name in enumerate(SWEEPS):
    _cls = type(f"VariantHALS{_i}", (VariantHALS,), {"variant": _name})
    RULES[_name] = _cls(inner_sweeps=None)


def fit_single(rule, problem, L0, R0, iters):
    opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=1)
    return iterate(rule, problem, rule.init(problem, L0, R0), **opts)


def part_target(Y, args):
    print(f"\n== time to relative error <= {TARGET} (ORL, rank 25, one shared random start) ==")
    L0, R0 = random_start(Y, 25, args.seed)
    n_sk = sk_iterations_to_target(Y, L0, R0, "cd", args.sk_cap)
    t_sk = best_time(lambda: sk_nmf(Y, L0, R0, "cd", n_sk), args.repeats)
    problem = build_problem(jnp.asarray(Y), 25)
    Lj, Rj = jnp.asarray(L0), jnp.asarray(R0)
    rows = [("sklearn cd", n_sk, t_sk, float("nan"))]
    for name in ("untiled, lax.map (before)", "tiled, lax.map (after)"):
        rule = RULES[name]
        n = None
        for iters in range(1, args.jnmf_cap + 1):  # the history is float32-cheap: check residuals
            out = fit_single(rule, problem, Lj, Rj, iters)
            if rel_err(Y, np.asarray(out.state.Lt).T, np.asarray(out.state.R)) <= TARGET:
                n = iters
                break
        t0 = time.perf_counter()
        jax.block_until_ready(fit_single(rule, problem, Lj, Rj, n + 1).state.Lt)  # compile (new trip count)
        compile_s = time.perf_counter() - t0
        t = best_time(
            lambda r=rule, n=n: jax.block_until_ready(fit_single(r, problem, Lj, Rj, n).state.Lt), 5
        )
        rows.append((f"jnmf ahals {name}", n, t, compile_s))
    print(f"{'solver':<40} {'iterations':>10} {'seconds':>8} {'vs sklearn cd':>14} {'1st call s':>10}")
    for name, n, t, c in rows:
        print(f"{name:<40} {n!s:>10} {t:>8.4f} {t / t_sk:>13.3f}x {c:>10.2f}")
    before, after = rows[1][2], rows[2][2]
    print(f"tiled vs untiled: {before / after:.2f}x; goal jnmf <= 0.10x sklearn cd -> {after / t_sk:.3f}x")


def _states(Y, problem, B, seed):
    L0, R0 = random_start(Y, 25, seed, B)
    rule = HALS(inner_sweeps=None)
    st = jax.vmap(lambda L, R: rule.init(problem, L, R))(jnp.asarray(L0), jnp.asarray(R0))
    step = jax.jit(jax.vmap(lambda s: rule.step(problem, s)[0]))
    for _ in range(5):  # away from the random start, where sweeps stop at other counts
        st = step(st)
    return st


def part_sweeps(Y, args):
    print("\n== the sweeps alone (ms, best of several; 1st call = compile + run) ==")
    problem = build_problem(jnp.asarray(Y), 25)
    m, n = Y.shape
    delta = jnp.float32(0.1)
    for B in (1, 4, 32):
        st = _states(Y, problem, max(B, 1), args.seed)
        hpL = jax.jit(jax.vmap(lambda s: half_problem_L(problem, s.Lt, s.R)))(st)
        hpR = jax.jit(jax.vmap(lambda s: half_problem_R(problem, s.Lt, s.R)))(st)
        sides = [
            ("L", hpL, st.Lt, HALS(None)._sweeps(m, n, 25)),
            ("R", hpR, st.R, HALS(None)._sweeps(n, m, 25)),
        ]
        for side, hp, X, ns in sides:
            if B == 1:
                hp, X = jax.tree.map(lambda a: a[0], hp), X[0]
                variants = {"untiled": lambda h, x, ns=ns: untiled_sweeps(h, x, ns, delta)}
                for t in args.tiles:
                    variants[f"tiled {t}"] = lambda h, x, ns=ns, t=t: hals_sweeps(h, x, ns, delta, tile=t)
            else:
                variants = {
                    "untiled lax.map": lambda h, x, ns=ns: jax.lax.map(
                        lambda a: untiled_sweeps(a[0], a[1], ns, delta), (h, x)
                    ),
                    "tiled lax.map": lambda h, x, ns=ns: jax.lax.map(
                        lambda a: hals_sweeps(a[0], a[1], ns, delta), (h, x)
                    ),
                }
                for t in args.tiles:
                    variants[f"tiled vmap {t}"] = jax.vmap(
                        lambda h, x, ns=ns, t=t: hals_sweeps(h, x, ns, delta, tile=t)
                    )
            base = None
            for name, fn in variants.items():
                f = jax.jit(fn)
                t0 = time.perf_counter()
                out = jax.block_until_ready(f(hp, X))
                first = time.perf_counter() - t0
                t = best_time(lambda f=f: jax.block_until_ready(f(hp, X)), 10 if B < 32 else 4)
                if base is None:
                    base, ref = t, out
                err = float(jnp.max(jnp.abs(out - ref)))
                print(
                    f"B={B:<3} {side} ({ns:>2} sweeps max) {name:<18} {1e3 * t:8.2f} ms  "
                    f"{base / t:5.2f}x vs first row   1st call {first:5.2f} s   max|diff| {err:.1e}"
                )


def part_restarts(Y, args):
    problem = build_problem(jnp.asarray(Y), 25)
    iters = args.iterations
    for B in (args.restarts, 4):
        print(f"\n== {B} restarts x {iters} iterations of ahals (ORL, rank 25) ==")
        L0, R0 = random_start(Y, 25, args.seed, B)
        L0j, R0j = jnp.asarray(L0), jnp.asarray(R0)
        opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=1)
        print(
            f"{'sweeps':<28} {'batched s':>10} {'loop s':>8} {'loop/batched':>13} {'1st batched call s':>19}"
        )
        for name, rule in RULES.items():

            def batched(rule=rule):
                return jax.block_until_ready(run_restarts(rule, problem, L0j, R0j, **opts).L)

            def loop(rule=rule):
                for i in range(B):
                    out = iterate(rule, problem, rule.init(problem, L0j[i], R0j[i]), **opts)
                return jax.block_until_ready(out.L)

            t0 = time.perf_counter()
            batched()
            first = time.perf_counter() - t0
            loop()
            tb, tl = best_time(batched, 2), best_time(loop, 2)
            print(f"{name:<28} {tb:>10.3f} {tl:>8.3f} {tl / tb:>12.2f}x {first:>19.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/orl_faces.npz")
    )
    ap.add_argument("--parts", nargs="+", default=["target", "sweeps", "restarts"])
    ap.add_argument("--tiles", nargs="+", type=int, default=[256, 512, TILE, 2048])
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sk-cap", type=int, default=400)
    ap.add_argument("--jnmf-cap", type=int, default=200)
    args = ap.parse_args()
    print(blas_report())
    print(f"jax {jax.__version__}, devices {jax.devices()}, default tile {TILE}")
    Y = load_orl(args.data)
    for part in args.parts:
        {"target": part_target, "sweeps": part_sweeps, "restarts": part_restarts}[part](Y, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
