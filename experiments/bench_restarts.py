"""32 restarts on ORL, each to relative error 0.1755 (rank 25): batched vs loops, one run.

The issue's restart goals (issue 15, part 2), measured side by side:

* jnmf batched: ``run_restarts`` (one compiled program, every restart stops on its own
  target test, ``Stopping(target=...)``) for each ``--methods`` x ``--strategies``
  pair, and with the strategy ``jnmf.batch.batching_strategy`` picks ("chosen"); each
  batched strategy with the slot count ``jnmf.batch.restart_slots`` picks (``S=``,
  continuous batching: a finished fit's slot is refilled with a pending one) and with
  every count of ``--slots`` (a count >= the restarts: all at once, no refill); each
  batched strategy also in the concurrent groups ``jnmf.batch.concurrent_groups`` picks
  (``G=``, each group's program from its own thread, each group picking its own slots)
  and in every count of ``--groups`` (default 1: one program for all fits);
* a Python loop of single jnmf fits of each ``--loop-methods`` (the first is the reference;
  default ``jnmf.fitting.DEFAULT_METHOD``), compiled once; with ``--threaded-loop``, also
  that loop split over as many Python threads as there are usable CPUs;
* a loop of scikit-learn ``NMF(solver="cd")`` fits, each run to the same error: the
  iterations each restart needs are found by bisection for ``--sk-sample`` restarts
  (scikit-learn has no callback), those fits are timed and scaled to all restarts.

Goals: the best batched >= 1.5x the jnmf loop, >= 10x the scikit-learn loop.  Times are
medians of ``--repeats`` (compile excluded), jnmf's runs interleaved.  ``--quick``: 8
restarts, 1 scikit-learn restart timed.

    python experiments/bench_restarts.py            # several minutes on 2 cores
    python experiments/bench_restarts.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

from _bench_env import blas_report, clean_blas_env

clean_blas_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_orl import (  # noqa: E402
    TARGET,
    load_orl,
    random_start,
    rel_err,
    rule_of,
    sk_iterations_to_target,
    sk_nmf,
)

from jnmf import fitting as jfit  # noqa: E402
from jnmf.batch import batching_strategy, concurrent_groups, restart_slots, run_restarts, usable_cpus  # noqa: E402
from jnmf.driver import Stopping, iterate  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "orl_faces.npz"))
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=["ahals", "hals"])
    ap.add_argument("--strategies", nargs="+", default=["map", "hybrid", "vmap"])
    ap.add_argument("--loop-methods", nargs="+", default=[jfit.DEFAULT_METHOD],
                    help="methods of the loops of single fits (the first: the reference)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cap", type=int, default=600, help="iteration cap of every fit")
    ap.add_argument("--sk-sample", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, nargs="*", default=[],
                    help="slot counts to run each batched strategy with, besides the chosen one")  # fmt: skip
    ap.add_argument("--groups", type=int, nargs="*", default=[1],
                    help="group counts for each batched strategy, besides the chosen one")  # fmt: skip
    ap.add_argument(
        "--fit-level",
        action="store_true",
        help="also time the user's calls: one jnmf.fit(restarts=B) against a loop of B jnmf.fit "
        "calls (each: checks, data on the device, start, loop, final objective)",
    )
    ap.add_argument("--threaded-loop", action="store_true",
                    help="also time the loop of single fits over one thread per usable CPU")  # fmt: skip
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    B = 8 if args.quick else args.restarts
    sk_sample = 1 if args.quick else args.sk_sample
    k = 25

    print(blas_report())
    print(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs); load average {load()}")
    Y = load_orl(args.data)
    m, n = Y.shape
    print(f"== {B} restarts, each to relative error <= {TARGET} (ORL {m} x {n}, rank {k}) ==")
    L0, R0 = random_start(Y, k, args.seed, B)
    L0j, R0j = jnp.asarray(L0), jnp.asarray(R0)
    target = 0.5 * (TARGET * float(np.linalg.norm(Y.astype(np.float64)))) ** 2
    stop = Stopping(max_iterations=args.cap, tol=0.0, target=target)
    problem = build_problem(jnp.asarray(Y), k)

    runs = {}  # label -> function returning something to block on
    for method in args.methods:
        rule = jfit.make_rule(rule_of(method))  # a name, or bench_orl's ahals-ex / hals-ex
        chosen = batching_strategy(rule, jax.default_backend(), problem=problem, rank=k, fits=B)
        for strategy in dict.fromkeys([*args.strategies, chosen]):
            tag = " (chosen)" if strategy == chosen else ""
            picked = restart_slots(strategy, rule.method_name, k, B)
            print(f"{method} {strategy}: restart_slots chooses {picked or 'no refill'} slots for {B} fits")
            counts = [None] if strategy == "map" else dict.fromkeys([picked or B, *args.slots])
            chosen_groups = concurrent_groups("cpu", B, strategy)
            for groups in dict.fromkeys([chosen_groups, *args.groups]):
                mark = f" G={groups}" + ("*" if groups == chosen_groups else "")
                # in groups, each group picks its own slots (the counts above are for one group)
                for slots in counts if groups == 1 else [None]:
                    size = "" if slots is None else f" S={slots}" + ("*" if slots == (picked or B) else "")

                    def batched(rule=rule, strategy=strategy, slots=slots, groups=groups):
                        return run_restarts(
                            rule, problem, L0j, R0j, stopping=stop, history_size=1, strategy=strategy,
                            slots=slots, groups=groups,
                        )  # fmt: skip

                    runs[f"batched {method} {strategy}{tag}{mark}{size}"] = batched
    loop_labels = {}
    for method in args.loop_methods:
        loop_rule = jfit.make_rule(rule_of(method))

        def loop(loop_rule=loop_rule):
            out = []
            for i in range(B):
                state = loop_rule.init(problem, L0j[i], R0j[i])
                res = iterate(loop_rule, problem, state, stopping=stop, history_size=1)
                out.append(jax.block_until_ready(res))
            return out

        loop_labels[method] = f"loop of {B} single {method} fits"
        runs[loop_labels[method]] = loop
        if args.threaded_loop:

            def threaded(loop_rule=loop_rule, threads=usable_cpus()):
                out = [None] * B

                def part(j):  # each thread runs every threads-th fit
                    for i in range(j, B, threads):
                        state = loop_rule.init(problem, L0j[i], R0j[i])
                        res = iterate(loop_rule, problem, state, stopping=stop, history_size=1)
                        out[i] = jax.block_until_ready(res)

                workers = [threading.Thread(target=part, args=(j,)) for j in range(threads)]
                [w.start() for w in workers]
                [w.join() for w in workers]
                return out

            runs[f"loop of {B} single {method} fits, {usable_cpus()} threads"] = threaded
    if args.fit_level:
        # what a user writes: jnmf.fit with a stack of starts, or a loop of jnmf.fit calls;
        # fit's own pipeline on both sides (it rescales Y, so counts may differ by one or two)
        method = args.loop_methods[0]

        def fit_batched(method=method):
            return jfit.fit(Y, k, method=rule_of(method), init=(L0, R0), restarts=B, stopping=stop,
                            history_size=1, return_all=True)  # fmt: skip

        def fit_loop(method=method):
            return [
                jfit.fit(Y, k, method=rule_of(method), init=(L0[i], R0[i]), stopping=stop, history_size=1)
                for i in range(B)
            ]

        runs[f"jnmf.fit {method} restarts={B}"] = fit_batched
        runs[f"loop of {B} jnmf.fit {method} calls"] = fit_loop
    loop_label = loop_labels[args.loop_methods[0]]
    checks = {}
    for label, fn in runs.items():  # compile, and check every restart reached the target
        res = jax.block_until_ready(fn())
        if isinstance(res, list):
            its = np.array([int(r.iterations) for r in res])
            worst = max(rel_err(Y, r.L, r.R) for r in res)
        elif getattr(res, "all_L", None) is not None:  # jnmf.fit(return_all=True): every restart
            its = np.asarray(res.all_iterations)
            worst = max(rel_err(Y, res.all_L[i], res.all_R[i]) for i in range(B))
        else:
            its = np.asarray(res.iterations)
            worst = max(rel_err(Y, res.L[i], res.R[i]) for i in range(B))
        checks[label] = (its, worst)
    times = {label: [] for label in runs}
    cpu_times = {label: [] for label in runs}  # this process's CPU time, all threads
    for _ in range(args.repeats):
        for label, fn in runs.items():
            c, t = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn())
            times[label].append(time.perf_counter() - t)
            cpu_times[label].append(time.process_time() - c)
    med = {label: statistics.median(ts) for label, ts in times.items()}
    cpu = {label: statistics.median(ts) for label, ts in cpu_times.items()}

    sk_iters = [sk_iterations_to_target(Y, L0[i], R0[i], "cd", args.cap) for i in range(sk_sample)]
    t_sk = 0.0
    for i, n in enumerate(sk_iters):
        t = time.perf_counter()
        sk_nmf(Y, L0[i], R0[i], "cd", n)
        t_sk += time.perf_counter() - t
    t_sk_all = t_sk * B / sk_sample
    print(f"scikit-learn cd iterations to the target for {sk_sample} restarts: {sk_iters}; "
          f"{t_sk:.2f} s, scaled to {B}: {t_sk_all:.2f} s")  # fmt: skip

    t_loop = med[loop_label]
    print(f"{'run':<46} {'seconds':>8} {'CPU s':>6} {'iterations min/med/max':>23} {'worst error':>11} "
          f"{'loop/this':>9} {'sklearn/this':>12}")  # fmt: skip
    for label in runs:
        its, worst = checks[label]
        span = f"{its.min()}/{int(np.median(its))}/{its.max()}"
        print(f"{label:<46} {med[label]:>8.2f} {cpu[label]:>6.2f} {span:>23} {worst:>11.4f} "
              f"{t_loop / med[label]:>9.2f} {t_sk_all / med[label]:>12.2f}")  # fmt: skip
    best = min((label for label in runs if label.startswith("batched")), key=med.get)
    print("(S=: slots, * the count restart_slots chooses; S >= restarts: all at once, no refill; "
          "G=: concurrent groups, * the count concurrent_groups chooses)")  # fmt: skip
    print(f"best batched: {best}")
    print(f"goal: best batched >= 1.5x the jnmf loop -> {t_loop / med[best]:.2f}x")
    print(f"goal: best batched >= 10x the scikit-learn cd loop -> {t_sk_all / med[best]:.2f}x")
    for method, label in loop_labels.items():  # each method batched against its own loop
        mine = [b for b in runs if b.startswith(f"batched {method} ")]
        if mine:
            b = min(mine, key=med.get)
            print(f"{method}: best batched / loop of the same method -> {med[label] / med[b]:.2f}x")
    print(f"load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
