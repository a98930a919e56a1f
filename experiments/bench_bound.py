"""Every iteration against its bound: the time per iteration of each method next to
the time of that iteration's products with Y alone, in one run (issue 15, part 1).

**What is timed.**  jnmf's rules run through jnmf's own batching layer and driver, as
``jnmf.fit`` runs them (:func:`jnmf.batch.run_restarts` with the default strategy of
:func:`jnmf.batch.batching_strategy`, a batch of one for a single fit), with the
convergence tests off (``tol=0``).  ``max_iterations`` is traced, so one compiled
program runs ``N1`` and ``N2`` iterations, and the time per iteration is
``(T(N2) - T(N1)) / (N2 - N1)``: the work before and after the loop (the starting and
final objectives, the transfers) cancels.  N1, N2 are 2, 12 for a single fit and 5, 25
for 32 restarts (``--batched-iterations``; until 2026-12-04 17:40 UTC 1, 2, which the
load's noise drowned).  The difference is the median over ``--repeats`` rounds (``--repeats
- 2``, at least 3, for 32 restarts) of the two warm calls of each round, interleaved with
the bound's calls so that a change of the machine's load hits both sides of a ratio alike.

**The bound** is the part of an iteration no algorithm of its kind avoids, compiled
alone with ``jax.jit`` at the same shapes and dtype (median over the rounds of the median
of 4 calls):

* Frobenius methods (hals, ahals, mu, au): the two products with Y, ``Lt Y``
  (``k x m`` times ``m x n``, the R step's d) and ``R Y'`` (``k x n`` times ``n x m``,
  the L step's d), i.e. ``4 m n k`` flops;
* KL: each half step's quotient ``Y / max(L R, eps)`` with ``L R`` formed (an
  ``m x n x k`` product and one elementwise pass), and its product with the fixed
  factor, twice per iteration, the R step's at the new L: ``8 m n k`` flops and two
  ``m x n`` quotients.  (Before 2026-12-04 14:00 UTC the R step's ``L R`` was formed
  from the old L, so XLA merged it with the L step's: that bound held 3 products and
  one quotient, and overstated KL's ratio.)

For 32 restarts the Frobenius bound is the products of the 32 factors stacked
(``k = 32 * rank``: one fat GEMM per side, what ``vmap`` stacking can reach), and the
KL bound is its single-fit bound under ``vmap`` (each restart's ``L R`` is its own).

**Batched rows: one program and what a user runs.**  Each batched method gets a row per
distinct group count of ``--groups`` (default ``1 auto``): ``G1`` is one program for the
32 fits, ``auto`` is ``run_restarts``'s default (:func:`jnmf.batch.concurrent_groups`: on
CPU ``"hybrid"`` and ``"map"`` fits are dealt into concurrent groups, one thread each;
``"vmap"`` runs one program, so its ``auto`` row is the ``G1`` row).  The column
``strategy`` reads e.g. ``hybrid G2 S2``: strategy, groups, slots per group
(``--slots`` overrides :func:`jnmf.batch.restart_slots`).  The bound of a grouped row is
the same as one program's: the 32 fits' products as ONE fat product, compiled alone,
which XLA runs on all cores; so a ratio at or below 1 is possible only if the groups
overlap their per-fit work with products.  The column ``vs slots`` divides by the
products as the slots stack them instead (S fits' products stacked, compiled alone,
times 32 / S): by default 32 fits run through 2 slots (8 for MU and AU), and a 50-row
product runs slower than an 800-row one, so the first ratio includes that and the second does not.  Groups
pay in wall time (two threads at once):
with ``--clock cpu`` both threads' time is counted, so CPU-time ratios cannot show their
gain and read the groups' total work instead.

    python experiments/bench_bound.py            # every case (~15 minutes on 2 cores)
    python experiments/bench_bound.py --quick    # ORL and float32 only, fewer repeats
    python experiments/bench_bound.py --quick --pieces --strategies auto hybrid
    python experiments/bench_bound.py --quick --clock cpu   # CPU time: robust to other load
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 cases; every array below has an explicit dtype

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jnmf.batch import batching_strategy, concurrent_groups, restart_slots, run_restarts  # noqa: E402
from jnmf.driver import Stopping  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.quadratic import half_problem  # noqa: E402
from jnmf.rules import make_rule  # noqa: E402
from jnmf.rules.hals_sweeps import hals_sweeps  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_orl import rule_of  # noqa: E402  (the jnmf variants ahals-ex / hals-ex)

FROBENIUS = ("hals", "ahals", "mu", "au", "hals-ex", "ahals-ex")


EPSILON = 1e-10  # KLMU's default floor of L R


def load_case(name: str) -> tuple[np.ndarray, int]:
    """(Y scaled to max 1, rank) of a case."""
    if name == "orl":
        from jnmf.datasets import load_orl_faces

        Y = load_orl_faces().faces.astype(np.float64)
        return Y / Y.max(), 25
    rng = np.random.default_rng(1)
    Y = rng.random((5000, 20)) @ rng.random((20, 2000)) + 0.1 * rng.random((5000, 2000))
    return Y / Y.max(), 20


# The clock of every timing (``--clock``): wall time, or this process's CPU time (all
# threads), which other processes' load barely moves.  CPU time counts a two-thread GEMM
# twice, so on a quiet machine a CPU-time ratio is lower than the wall-time one wherever
# single-threaded work (HALS sweeps) sits beside multi-threaded products.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def median_time(fn, repeats: int) -> float:
    """Median time (``clock``) of ``repeats`` warm calls (fn blocks until ready)."""
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


@jax.jit
def frobenius_products(Y, Lt, R):
    return Lt @ Y, R @ Y.T


def _kl_half_steps(Y, Lt, R):
    Q_L = Y / jnp.maximum(Lt.T @ R, EPSILON)
    num_L = R @ Q_L.T
    # The R step's quotient is at the NEW L, which depends on num_L (here a k x m
    # elementwise update, negligible next to the m x n work).  Formed from the old Lt,
    # the second L R would be the first one and XLA would merge them (common
    # subexpression): a bound of 3 products and one quotient instead of 4 and 2.
    Lt_new = Lt * num_L
    Q_R = Y / jnp.maximum(Lt_new.T @ R, EPSILON)
    return Lt_new, Lt_new @ Q_R


kl_products = jax.jit(_kl_half_steps)
kl_products_batched = jax.jit(jax.vmap(_kl_half_steps, in_axes=(None, 0, 0)))


def bound_call(method: str, Y, Lt, R, batch: int):
    """A call running one iteration's bound (see the module docstring), compiled."""
    if method == "kl":
        if batch > 1:
            fn = lambda: jax.block_until_ready(kl_products_batched(Y, Lt, R))  # noqa: E731
        else:
            fn = lambda: jax.block_until_ready(kl_products(Y, Lt[0], R[0]))  # noqa: E731
    else:
        k = Lt.shape[-2]
        Lt_s, R_s = Lt.reshape(batch * k, -1), R.reshape(batch * k, -1)  # stacked restarts
        fn = lambda: jax.block_until_ready(frobenius_products(Y, Lt_s, R_s))  # noqa: E731
    fn()
    return fn


def chosen_groups(strategy: str, fits: int, groups: str) -> int:
    """The concurrent groups a batched row runs in: ``"1"`` one program, ``"auto"`` what
    ``run_restarts`` picks by default (:func:`jnmf.batch.concurrent_groups`), or a count."""
    if groups == "auto":
        return concurrent_groups(jax.default_backend(), fits, strategy)
    return min(int(groups), fits)


def iteration_and_bound(
    method: str, problem, L0, R0, n1: int, n2: int, repeats: int, strategy=None, groups: int = 1, slots=None
):
    """(seconds per iteration, bound seconds, strategy, slots' bound seconds), timed
    interleaved.

    The slots' bound (None unless ``slots`` < the fits) is the products stacked as the
    slots stack them: S fits' products stacked, times fits / S.

    The iteration goes through run_restarts (see the module docstring) with ``groups``
    concurrent groups (1: one program) and ``slots`` (None: run_restarts's choice).  The
    calls are interleaved (N1 iterations, N2 iterations, the bound, 4 times per round) so
    that a change of the machine's load hits both sides of the ratio alike.
    """
    rule = make_rule(rule_of(method))  # a name, or bench_orl's ahals-ex / hals-ex
    # as run_restarts chooses it: by method, rank and number of fits
    strategy = strategy or batching_strategy(rule, problem=problem, rank=R0.shape[-2], fits=R0.shape[0])

    def run(n):
        res = run_restarts(
            rule,
            problem,
            L0,
            R0,
            stopping=Stopping(max_iterations=n, tol=0.0),
            strategy=strategy,
            groups=groups,
            slots=slots,
        )
        return jax.block_until_ready(res.factors)

    run(n1)  # compile (max_iterations is traced: n2 runs the same program)
    Lt0, batch = jnp.swapaxes(L0, 1, 2), L0.shape[0]
    bound = bound_call(method, problem.data.Y, Lt0, R0, batch)
    # the products as the slots stack them: S fits at a time, batch / S times
    narrow = None
    if slots and slots < batch and method in FROBENIUS:
        narrow = bound_call(method, problem.data.Y, Lt0[:slots], R0[:slots], slots)
    diffs, tb, tn = [], [], []
    for _ in range(repeats):
        t1 = median_time(lambda: run(n1), 1)
        diffs.append(median_time(lambda: run(n2), 1) - t1)  # paired within the round
        tb.append(median_time(bound, 4))
        if narrow is not None:
            tn.append(median_time(narrow, 4) * batch / slots)
    per_iter = statistics.median(diffs) / (n2 - n1)
    return per_iter, statistics.median(tb), strategy, statistics.median(tn) if tn else None


def print_pieces(method: str, problem, L, R, per_iter: float, repeats: int) -> None:
    """Where a HALS iteration's time goes: each half problem (its product with Y, Gram
    matrix and linear term) and each half step's sweeps (as many as accelerated HALS
    takes from these factors), each compiled alone; the rest is the driver's and the
    step's bookkeeping (steps, objective, stopping tests) and what the pieces share."""
    rule = make_rule(rule_of(method))  # a name, or bench_orl's ahals-ex / hals-ex
    Lt = L.T
    hp_of = jax.jit(half_problem, static_argnums=1)
    m, n = problem.shape
    n_L, n_R = rule.sweeps(m, n, Lt.shape[0]), rule.sweeps(n, m, Lt.shape[0])
    delta = rule.delta.astype(Lt.dtype)
    sweeps = jax.jit(hals_sweeps, static_argnums=2)
    hp_L = hp_of(problem, "L", Lt, R)
    Lt_new = sweeps(hp_L, Lt, n_L, delta)
    hp_R = hp_of(problem, "R", Lt_new, R)
    pieces = {
        "half problem L (R Y')": lambda: hp_of(problem, "L", Lt, R),
        "half problem R (L' Y)": lambda: hp_of(problem, "R", Lt_new, R),
        f"sweeps L (max {n_L})": lambda: sweeps(hp_L, Lt, n_L, delta),
        f"sweeps R (max {n_R})": lambda: sweeps(hp_R, R, n_R, delta),
    }
    total = 0.0
    for name, fn in pieces.items():
        jax.block_until_ready(fn())
        t = statistics.median(median_time(lambda: jax.block_until_ready(fn()), 1) for _ in range(4 * repeats))
        total += t
        print(f"    {name:24} {1e3 * t:7.2f} ms")
    print(f"    {'rest of the iteration':24} {1e3 * (per_iter - total):7.2f} ms", flush=True)


def method_rows(method: str, chosen: str, problem, L0, R0, counts, repeats: int, args):
    """Each row of a method: (how it ran, ms per iteration, bound ms, ratio, ratio to the
    slots' bound or None); batched, one
    row per distinct group count of ``args.groups`` (``"auto"``: what a user runs)."""
    batch, k = R0.shape[0], R0.shape[-2]
    rule = make_rule(rule_of(method))
    strategy = batching_strategy(rule, problem=problem, rank=k, fits=batch) if chosen == "auto" else chosen
    counts_of_groups = [chosen_groups(strategy, batch, g) for g in args.groups] if batch > 1 else [1]
    rows = []
    for groups in dict.fromkeys(counts_of_groups):  # distinct, in order ("auto" is 1 under "vmap")
        per_group = -(-batch // groups)
        slots = args.slots or (restart_slots(strategy, rule.method_name, k, per_group) if batch > 1 else None)
        timed = iteration_and_bound(method, problem, L0, R0, *counts, repeats, strategy, groups, slots)
        per_iter, bound, narrow = timed[0], timed[1], timed[3]
        how = strategy + (f" G{groups}" if batch > 1 else "") + (f" S{slots}" if slots else "")
        rows.append((how, 1e3 * per_iter, 1e3 * bound, per_iter / bound, narrow and per_iter / narrow))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ORL, float32, 3 repeats")
    ap.add_argument("--cases", nargs="+", default=["orl", "random"], choices=["orl", "random"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    ap.add_argument("--methods", nargs="+", default=["ahals", "hals", "mu", "au", "kl"],
                    help="method names, or ahals-ex / hals-ex (HALS with extrapolate=True)")  # fmt: skip
    ap.add_argument("--modes", nargs="+", default=["single", "batched"], choices=["single", "batched"])
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batched-iterations", type=int, nargs=2, default=[5, 25], metavar=("N1", "N2"),
                    help="the two iteration counts of the batched runs (default 5 25)")  # fmt: skip
    ap.add_argument("--strategies", nargs="+", default=["auto"], choices=["auto", "vmap", "hybrid", "map"],
                    help="batching strategies of the batched runs (auto: jnmf's choice)")  # fmt: skip
    ap.add_argument("--groups", nargs="+", default=["1", "auto"],
                    help="concurrent groups of the batched runs: 1 (one program), auto (what a user "
                         "runs: run_restarts's default), or a count; repeated counts run once")  # fmt: skip
    ap.add_argument("--slots", type=int, default=None,
                    help="slots of the batched loops (default: run_restarts's, restart_slots)")  # fmt: skip
    ap.add_argument("--pieces", action="store_true", help="also time the pieces of hals/ahals iterations")
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="wall time, or process CPU time (robust to other processes' load)")  # fmt: skip
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.quick:
        args.cases, args.dtypes, args.repeats = ["orl"], ["float32"], 3

    print(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs), clock {args.clock}; "
          f"load average at start: {open('/proc/loadavg').read().split()[:3]}")  # fmt: skip
    print(f"{'method':6} {'case':18} {'dtype':8} {'mode':12} {'strategy':16} "
          f"{'ms/iter':>8} {'bound ms':>9} {'ratio':>6} {'vs slots':>8}")  # fmt: skip
    start = time.perf_counter()
    rows = []
    for case in args.cases:
        Y64, k = load_case(case)
        m, n = Y64.shape
        for dtype in args.dtypes:
            Y = jnp.asarray(Y64.astype(dtype))
            problem = build_problem(Y, k)
            rng = np.random.default_rng(0)
            for mode in args.modes:
                batch = args.restarts if mode == "batched" else 1
                scale = np.sqrt(float(np.mean(Y64)) / k)  # scikit-learn's random start scale
                L0 = jnp.asarray((scale * rng.random((batch, m, k))).astype(dtype))
                R0 = jnp.asarray((scale * rng.random((batch, k, n))).astype(dtype))
                # enough iterations that the difference is well above the timer's and the
                # load's noise: batched, 1 vs 2 iterations (one iteration of 32 fits is
                # 0.1-1 s) did not repeat within 2x between runs; 5 vs 25 repeat within ~10%
                n1, n2 = tuple(args.batched_iterations) if batch > 1 else (2, 12)
                repeats = max(3, args.repeats - 2) if batch > 1 else args.repeats
                strategies = args.strategies if batch > 1 else ["auto"]
                for method, chosen in [(m_, s_) for m_ in args.methods for s_ in strategies]:
                    if chosen == "hybrid" and method not in FROBENIUS:
                        continue  # hybrid batches the alternating rules' half steps only
                    label = f"{case} {m}x{n} k{k}"
                    mode_label = f"{mode}" + (f" x{batch}" if batch > 1 else "")
                    for row in method_rows(method, chosen, problem, L0, R0, (n1, n2), repeats, args):
                        rows.append((method, label, dtype, mode_label, *row))
                        print(f"{method:6} {label:18} {dtype:8} {mode_label:12} {row[0]:16} "
                              f"{row[1]:8.2f} {row[2]:9.2f} {row[3]:6.2f} "
                              + (f"{row[4]:8.2f}" if row[4] else f"{'-':>8}"), flush=True)  # fmt: skip
                        per_iter = row[1] / 1e3
                    if args.pieces and batch == 1 and method in ("hals", "ahals", "hals-ex", "ahals-ex"):
                        print_pieces(method, problem, L0[0], R0[0], per_iter, args.repeats)
    print(f"total {time.perf_counter() - start:.0f} s; load average at end: "
          f"{open('/proc/loadavg').read().split()[:3]}")  # fmt: skip
    worst = max((r for r in rows if r[0] in FROBENIUS), key=lambda r: r[7], default=None)
    if worst:
        print(f"worst Frobenius ratio: {worst[7]:.2f} ({worst[0]}, {worst[1]}, {worst[2]}, {worst[3]})")


if __name__ == "__main__":
    main()
