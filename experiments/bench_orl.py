"""jnmf vs scikit-learn on ORL faces (10304 x 400, rank 25), side by side in one run.

Parts (``--parts``; all by default):

* ``target``: time to reach relative Frobenius error <= 0.1755 from one shared
  random start: jnmf's default method (and the others) vs scikit-learn
  ``NMF(solver="cd")`` and ``solver="mu"``.  Goal: jnmf <= 0.25x scikit-learn cd.
* ``restarts``: 32 restarts x 200 iterations: ``fit(restarts=32)`` (one vmapped
  program) vs a Python loop of 32 single jitted jnmf fits, for every method, and
  vs a loop of scikit-learn cd fits (8 timed, scaled to 32).  Goals: batched
  >= 1.5x the jnmf loop for every method; >= 3.5x the scikit-learn loop for the
  default method.
* ``restarts_target``: 32 restarts, each run until it reaches the target error
  (``Stopping(target=...)``: every restart stops on its own), as one batched
  ``fit`` and as a loop of single jnmf fits, against a loop of scikit-learn cd fits
  each run to the same error (iterations found by bisection for ``--sk-sample``
  restarts, timed and scaled to 32).  Goals: >= 10x the scikit-learn loop, >= 1.5x
  the jnmf loop.
* ``hals_rule``: time to the same target for accelerated HALS's inner-sweep rule
  (Gillis & Glineur's ``alpha``, ``delta``) and Ang & Gillis's (2019) extrapolation
  (``HALS(extrapolate=True)``), each against scikit-learn cd in the same run.
* ``gflops``: achieved GFLOP/s of batched MU and HALS (rank x restarts >= 256) vs the
  machine's float32 matmul peak (a large ``jnp.dot`` timed here).  Goal: MU >= 70%.
* ``plot``: error-vs-time of all methods on ORL and on scikit-learn's digits (rank 16).

Run:  pip install -e .[bench];  python experiments/bench_orl.py --data ../shared/data/orl_faces.npz
On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set (they slow numpy's
BLAS), the script re-executes itself without them and prints the BLAS kernel
scikit-learn runs on, so the peer runs at its best.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench_env import best_time as _best_time
from _bench_env import blas_report, clean_blas_env

clean_blas_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jnmf import fitting as jfit  # noqa: E402
from jnmf.batch import run_restarts  # noqa: E402
from jnmf.driver import Stopping, iterate  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.rules.hals import HALS  # noqa: E402

TARGET = 0.1755
METHODS = ["hals", "ahals", "mu", "au", "anls", "kl", "pg"]
FROBENIUS = ["hals", "ahals", "mu", "au", "anls", "pg"]
# jnmf variants by name (``--methods`` takes them too): HALS with Ang & Gillis's extrapolation
VARIANTS = {
    "ahals-ex": lambda: HALS(inner_sweeps=None, extrapolate=True),
    "hals-ex": lambda: HALS(inner_sweeps=1, extrapolate=True),
}


def rule_of(method: str):
    """A method name of jnmf or of VARIANTS, as ``fit`` takes it; ``ahals-a<alpha>``
    (e.g. ``ahals-a0.5``) is extrapolated accelerated HALS with that ``alpha``."""
    if method.startswith("ahals-a"):
        return HALS(inner_sweeps=None, extrapolate=True, alpha=float(method[len("ahals-a") :]))
    return VARIANTS[method]() if method in VARIANTS else method


def load_orl(path: str) -> np.ndarray:
    d = np.load(path)
    images = d["images"]
    return (images.reshape(images.shape[0], -1).T / 255.0).astype(np.float32)


def random_start(Y: np.ndarray, k: int, seed: int, restarts: int | None = None):
    """scikit-learn's random init: sqrt(mean(Y)/k) * |N(0, 1)|."""
    rng = np.random.default_rng(seed)
    s = np.sqrt(Y.mean() / k)
    shape = () if restarts is None else (restarts,)
    L = np.abs(rng.standard_normal((*shape, Y.shape[0], k))) * s
    R = np.abs(rng.standard_normal((*shape, k, Y.shape[1]))) * s
    return L.astype(np.float32), R.astype(np.float32)


def rel_err(Y, L, R) -> float:
    Y = np.asarray(Y, np.float64)
    return float(
        np.linalg.norm(Y - np.asarray(L, np.float64) @ np.asarray(R, np.float64)) / np.linalg.norm(Y)
    )


# ``--clock cpu``: this process's CPU time (all threads; numpy's BLAS and XLA alike), which
# other processes' load barely moves, instead of wall time
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def best_time(fn, repeats: int = 3) -> float:
    """Shortest time of ``repeats`` calls on this script's ``clock`` (``--clock``)."""
    return _best_time(fn, repeats, clock)


def sk_nmf(Y, L0, R0, solver: str, iters: int):
    from sklearn.decomposition import NMF

    model = NMF(L0.shape[1], init="custom", solver=solver, tol=0.0, max_iter=iters)
    W = model.fit_transform(Y, W=L0.copy(), H=R0.copy())
    return W, model.components_


def sk_iterations_to_target(Y, L0, R0, solver: str, cap: int) -> int | None:
    """Smallest max_iter reaching TARGET (bisection; scikit-learn has no callback)."""
    if rel_err(Y, *sk_nmf(Y, L0, R0, solver, cap)) > TARGET:
        return None
    lo, hi = 0, cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rel_err(Y, *sk_nmf(Y, L0, R0, solver, mid)) <= TARGET:
            hi = mid
        else:
            lo = mid
    return hi


def jnmf_iterations_to_target(Y, L0, R0, method, cap: int) -> int | None:
    """Iterations of ``method`` (a name or a rule) to TARGET, from its history."""
    res = jfit.fit(
        Y,
        L0.shape[1],
        method=rule_of(method) if isinstance(method, str) else method,
        init=(L0, R0),
        max_iterations=cap,
        tol=0.0,
        history_size=cap,
    )
    h = np.asarray(res.history, np.float64)
    err = np.sqrt(np.maximum(2 * h, 0)) / np.linalg.norm(Y)
    if method == "kl":  # history holds the KL divergence: check the Frobenius error directly
        return None
    hits = np.nonzero(err <= TARGET)[0]
    if hits.size == 0:
        return None
    n = int(hits[0]) + 1
    # the history is the cheap float32 form; confirm with the residual
    while rel_err(Y, *_jnmf_run(Y, L0, R0, method, n)) > TARGET and n < cap:
        n += 1
    return n


def _jnmf_run(Y, L0, R0, method, iters):
    res = jfit.fit(
        Y,
        L0.shape[1],
        method=rule_of(method) if isinstance(method, str) else method,
        init=(L0, R0),
        max_iterations=iters,
        tol=0.0,
        history_size=1,
    )
    return jax.block_until_ready(res.L), res.R


def part_target(Y, args):
    print(f"\n== time to relative error <= {TARGET} (ORL, rank 25, one shared random start) ==")
    L0, R0 = random_start(Y, 25, args.seed)
    rows = []
    for solver in ("cd", "mu"):
        n = sk_iterations_to_target(Y, L0, R0, solver, args.sk_cap)
        t = best_time(lambda s=solver, n=n: sk_nmf(Y, L0, R0, s, n)) if n else float("nan")
        rows.append((f"sklearn {solver}", n, t))
    for method in args.methods:
        if method == "kl":
            continue
        n = jnmf_iterations_to_target(Y, L0, R0, method, args.jnmf_cap)
        if n is None:
            rows.append((f"jnmf {method}", None, float("nan")))
            continue
        _jnmf_run(Y, L0, R0, method, n)  # compile
        rows.append((f"jnmf {method}", n, best_time(lambda m=method, n=n: _jnmf_run(Y, L0, R0, m, n))))
    cd = rows[0][2]
    print(f"{'solver':<14} {'iterations':>10} {'seconds':>8} {'vs sklearn cd':>14}")
    for name, n, t in rows:
        print(f"{name:<14} {str(n):>10} {t:>8.3f} {t / cd:>13.3f}x")
    default = next(t for name, _, t in rows if name == f"jnmf {jfit.DEFAULT_METHOD}")
    print(f"goal: jnmf default ({jfit.DEFAULT_METHOD}) <= 0.25x sklearn cd -> {default / cd:.3f}x")


def part_hals_rule(Y, args):
    """Time to TARGET for accelerated HALS's sweep rule (alpha, delta) with and without
    extrapolation, against scikit-learn cd in the same run (its time measured first and
    again last; the ratio uses their mean)."""
    print(f"\n== HALS rules: time to relative error <= {TARGET} (ORL, rank 25, one shared random start) ==")
    L0, R0 = random_start(Y, 25, args.seed)
    n_cd = sk_iterations_to_target(Y, L0, R0, "cd", args.sk_cap)
    t_cd = best_time(lambda: sk_nmf(Y, L0, R0, "cd", n_cd))
    rows = []
    for extrapolate in (False, True):
        for inner, alpha, delta in args.hals_grid:
            rule = HALS(inner_sweeps=inner, alpha=alpha, delta=delta, extrapolate=extrapolate)
            n = jnmf_iterations_to_target(Y, L0, R0, rule, args.jnmf_cap)
            if n is None:
                rows.append((inner, alpha, delta, extrapolate, None, float("nan")))
                continue
            _jnmf_run(Y, L0, R0, rule, n)  # compile
            rows.append(
                (
                    inner,
                    alpha,
                    delta,
                    extrapolate,
                    n,
                    best_time(lambda r=rule, n=n: _jnmf_run(Y, L0, R0, r, n)),
                )
            )
    t_cd = 0.5 * (t_cd + best_time(lambda: sk_nmf(Y, L0, R0, "cd", n_cd)))
    print(f"sklearn cd: {n_cd} iterations, {t_cd:.3f} s (mean of the first and last measurement)")
    print(f"{'sweeps':>6} {'alpha':>5} {'delta':>5} {'extrap.':>7} {'iters':>5} {'seconds':>8} {'vs cd':>7}")
    for inner, alpha, delta, extrapolate, n, t in rows:
        sweeps = "1" if inner == 1 else "auto"
        print(
            f"{sweeps:>6} {alpha:>5} {delta:>5} {str(extrapolate):>7} {str(n):>5} {t:>8.3f} {t / t_cd:>6.3f}x"
        )


def _hals_grid(text: str):
    """``sweeps:alpha:delta`` (sweeps ``auto`` or an integer) -> (inner_sweeps, alpha, delta)."""
    sweeps, alpha, delta = text.split(":")
    return (None if sweeps == "auto" else int(sweeps)), float(alpha), float(delta)


def part_restarts(Y, args):
    B, iters, k = args.restarts, args.iterations, 25
    print(f"\n== {B} restarts x {iters} iterations, rank {k} (ORL) ==")
    L0, R0 = random_start(Y, k, args.seed, B)
    Yj = jnp.asarray(Y)
    problem = build_problem(Yj, k)
    L0j, R0j = jnp.asarray(L0), jnp.asarray(R0)
    print(f"{'method':<8} {'batched s':>10} {'loop s':>8} {'batched/loop speedup':>21}")
    results = {}
    for method in args.methods:
        rule = jfit.make_rule(method)
        # ANLS solves 10304 exact NNLS problems per half step (~0.1 s an iteration): its
        # batched-vs-loop ratio is measured on fewer restarts and iterations.
        B, iters = (8, 20) if method == "anls" else (args.restarts, args.iterations)
        opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=1)

        def batched(rule=rule, opts=opts):
            return jax.block_until_ready(run_restarts(rule, problem, L0j, R0j, **opts).L)

        def loop(rule=rule, opts=opts):
            for i in range(B):
                out = iterate(rule, problem, rule.init(problem, L0j[i], R0j[i]), **opts)
            return jax.block_until_ready(out.L)

        batched(), loop()  # compile both
        tb, tl = best_time(batched, 2), best_time(loop, 2)
        results[method] = (tb, tl)
        note = f"  ({B} restarts x {iters} iterations)" if method == "anls" else ""
        print(f"{method:<8} {tb:>10.3f} {tl:>8.3f} {tl / tb:>20.2f}x{note}")
    B, iters = args.restarts, args.iterations
    n_sk = min(8, B)
    t_sk = best_time(lambda: [sk_nmf(Y, L0[i], R0[i], "cd", iters) for i in range(n_sk)], 1) * B / n_sk
    print(f"sklearn cd loop ({n_sk} timed, scaled to {B}): {t_sk:.3f} s")
    for method in ("hals", "ahals"):
        if method in results:
            tag = " (default)" if method == jfit.DEFAULT_METHOD else ""
            ratio = t_sk / results[method][0]
            print(f"goal: batched {method}{tag} >= 3.5x sklearn cd loop -> {ratio:.2f}x")
    worst = min(tl / tb for tb, tl in results.values())
    print(f"goal: batched >= 1.5x jnmf loop for every method -> worst {worst:.2f}x")


def part_restarts_target(Y, args):
    B, k = args.restarts, 25
    method = args.target_method
    print(f"\n== {B} restarts, each to relative error <= {TARGET} (ORL, rank {k}, {method}) ==")
    L0, R0 = random_start(Y, k, args.seed, B)
    target = 0.5 * (TARGET * float(np.linalg.norm(Y.astype(np.float64)))) ** 2
    stop = Stopping(max_iterations=args.jnmf_cap, tol=0.0, target=target)
    problem = build_problem(jnp.asarray(Y), k)
    rule = jfit.make_rule(method)
    L0j, R0j = jnp.asarray(L0), jnp.asarray(R0)

    def batched():
        res = run_restarts(rule, problem, L0j, R0j, stopping=stop, history_size=1)
        return jax.block_until_ready(res)

    def loop():
        out = []
        for i in range(B):
            res = iterate(rule, problem, rule.init(problem, L0j[i], R0j[i]), stopping=stop, history_size=1)
            out.append(jax.block_until_ready(res))
        return out

    res = batched()  # compile
    loop()
    tb, tl = best_time(batched, 2), best_time(loop, 2)
    its = np.asarray(res.iterations)
    errs = [rel_err(Y, res.L[i], res.R[i]) for i in range(B)]
    print(f"jnmf iterations per restart: min {its.min()}, median {int(np.median(its))}, max {its.max()}; "
          f"all reached the target: {bool(np.all(np.asarray(res.status) == 0))} "
          f"(largest final error {max(errs):.4f})")  # fmt: skip
    n_sk = min(args.sk_sample, B)
    sk_iters = [sk_iterations_to_target(Y, L0[i], R0[i], "cd", args.sk_cap) for i in range(n_sk)]
    t_sk = sum(
        best_time(lambda i=i, n=n: sk_nmf(Y, L0[i], R0[i], "cd", n), 1) for i, n in enumerate(sk_iters)
    )
    t_sk_all = t_sk * B / n_sk
    print(f"sklearn cd iterations to target for {n_sk} restarts: {sk_iters}; {t_sk:.2f} s, scaled to {B}: "
          f"{t_sk_all:.2f} s")  # fmt: skip
    print(f"jnmf batched {tb:.3f} s, jnmf loop {tl:.3f} s")
    print(f"goal: batched >= 10x sklearn cd loop -> {t_sk_all / tb:.2f}x")
    print(f"goal: batched >= 1.5x jnmf loop -> {tl / tb:.2f}x")


def matmul_peak() -> float:
    n = 4096
    A = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(A))
    t = best_time(lambda: jax.block_until_ready(f(A)), 5)
    return 2 * n**3 / t / 1e9


def part_gflops(Y, args):
    print("\n== achieved GFLOP/s of batched MU and HALS vs float32 matmul peak ==")
    peak = matmul_peak()
    print(f"float32 matmul peak ({4096}^2 jnp.dot): {peak:.0f} GFLOP/s")
    m, n = Y.shape
    problem = build_problem(jnp.asarray(Y), 25)
    for k, B in ((25, 16), (25, 32)):
        L0, R0 = random_start(Y, k, args.seed, B)
        L0j, R0j = jnp.asarray(L0), jnp.asarray(R0)
        iters = 50
        # per fit and iteration: 4mnk for the two products with Y, ~4k^2(m+n) for Gram and G X
        flops = (4 * m * n * k + 4 * k * k * (m + n)) * B * iters
        for method in ("mu", "hals"):
            rule = jfit.make_rule(method)
            opts = dict(max_iterations=iters, min_xstep=0.0, tol=0.0, history_size=1)
            run = lambda rule=rule, opts=opts: jax.block_until_ready(  # noqa: E731
                run_restarts(rule, problem, L0j, R0j, **opts).L
            )
            run()
            t = best_time(run, 3)
            g = flops / t / 1e9
            share = 100 * g / peak
            print(f"rank {k} x {B} = {k * B:>4}: {method:<5} {g:6.0f} GFLOP/s = {share:5.1f}% of peak")


def part_plot(Y, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits

    digits = load_digits().data.astype(np.float32)
    datasets = [("ORL faces 10304x400, rank 25", Y, 25, 300), ("digits 1797x64, rank 16", digits, 16, 400)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (title, X, k, iters) in zip(axes, datasets):
        L0, R0 = random_start(X, k, args.seed)
        norm = np.linalg.norm(X)
        for method in args.methods:
            if method == "kl":
                continue
            _jnmf_run(X, L0, R0, method, 2)
            t = best_time(lambda m=method: _jnmf_run(X, L0, R0, m, iters), 1)
            res = jfit.fit(
                X, k, method=method, init=(L0, R0), max_iterations=iters, tol=0.0, history_size=iters
            )
            err = np.sqrt(np.maximum(2 * np.asarray(res.history, np.float64), 0)) / norm
            ax.plot(np.arange(1, iters + 1) * t / iters, err, label=f"jnmf {method}")
        for solver in ("cd", "mu"):
            pts = []
            for n_it in np.unique(np.geomspace(1, iters, 10).astype(int)):
                t = best_time(lambda s=solver, n_it=n_it: sk_nmf(X, L0, R0, s, int(n_it)), 1)
                pts.append((t, rel_err(X, *sk_nmf(X, L0, R0, solver, int(n_it)))))
            pts = np.array(pts)
            ax.plot(pts[:, 0], pts[:, 1], "o--", label=f"sklearn {solver}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("seconds (compiled; sklearn: one run per point)")
        ax.set_ylabel("relative Frobenius error")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"\nwrote {args.plot}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "../../shared/data/orl_faces.npz")
    )
    parts = {
        "target": part_target,
        "restarts": part_restarts,
        "restarts_target": part_restarts_target,
        "hals_rule": part_hals_rule,
        "gflops": part_gflops,
        "plot": part_plot,
    }
    ap.add_argument("--parts", nargs="+", default=list(parts), choices=list(parts))
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sk-cap", type=int, default=400)
    ap.add_argument("--jnmf-cap", type=int, default=400)
    ap.add_argument("--plot", default="docs/figures/error_vs_time.png")
    ap.add_argument("--target-method", default=jfit.DEFAULT_METHOD, help="method of restarts_target")
    grid = [
        "1:0.2:0.1",
        "auto:0.1:0.1",
        "auto:0.2:0.1",
        "auto:0.3:0.1",
        "auto:0.5:0.1",
        "auto:0.2:0.01",
        "auto:0.2:0.3",
    ]
    ap.add_argument("--hals-grid", nargs="+", type=_hals_grid, default=[_hals_grid(g) for g in grid],
                    help="sweeps:alpha:delta of the hals_rule part (sweeps: auto or an int)")  # fmt: skip
    ap.add_argument("--sk-sample", type=int, default=4, help="sklearn restarts timed in restarts_target")
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall or process CPU time")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    print(blas_report())
    print(f"clock {args.clock}; load average {open('/proc/loadavg').read().split()[:3]}")
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    Y = load_orl(args.data)
    for part in args.parts:
        parts[part](Y, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
