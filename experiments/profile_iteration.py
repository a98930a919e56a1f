"""Where an iteration's time goes: a per-operation profile of a compiled fit on ORL faces.

Runs ``--fits`` fits of ``--iterations`` iterations of a method on ORL (10304 x 400,
rank 25, float32), one by one (``--mode single``) or batched (``--mode hybrid`` / ``vmap``
/ ``map``, one program, ``--slots``), under ``jax.profiler`` with XLA:CPU's per-thunk
trace events (``--xla_cpu_enable_xprof_traceme``), reads the trace back with
``jax.profiler.ProfileData`` (no TensorBoard needed) and prints the exclusive time of each
compiled operation (its own time, without the operations nested in it: a ``while`` or a
``conditional`` counts only its own bookkeeping), largest first, grouped in classes:

* ``products``: XLA:CPU's YNNPACK fusions and dots called at most a few times per
  iteration (the products with Y and the factors' Gram matrices);
* ``per-row``: operations called ``--row-calls`` times or more per fit and iteration: the
  row-by-row work of HALS's sweeps (a GEMV and a row update per row of each column tile);
* ``copies``: ``copy`` operations (XLA's copies of loop-carried buffers);
* ``loop``: ``while`` / ``conditional`` / the thunk executor's own time;
* ``other``: everything else (elementwise passes over the factors, reductions).

Per-event tracing costs ~0.5-1 us per operation, so classes made of many tiny operations
(``per-row``, ``loop``) come out inflated against an untraced run: read the classes'
shares, not their sum, against the untraced time per iteration the script prints first.

Run:  python experiments/profile_iteration.py [--method ahals] [--mode single] [--fits 4]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

from _bench_env import clean_blas_env  # noqa: E402

clean_blas_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_orl import load_orl, random_start, rule_of  # noqa: E402

from jnmf import fitting as jfit  # noqa: E402
from jnmf.batch import run_restarts  # noqa: E402
from jnmf.driver import Stopping, iterate  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# the profiler's and Python's own events, not compiled operations
HOST_EVENTS = ("$", "PjitFunction", "CommonPjRt", "ThunkExecutor::Execute (wait", "DevicePut", "stop_trace")


def exclusive_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """Each event name's exclusive time (ns) and call count, over every thread of the trace."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    own, calls = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            events = [(e.start_ns, e.duration_ns, e.name) for e in line.events]
            events.sort(key=lambda e: (e[0], -e[1]))
            stack: list[list] = []  # [end, name, duration, children's time]

            def close():
                end, name, duration, children = stack.pop()
                own[name] += duration - children
                calls[name] += 1

            for start, duration, name in events:
                while stack and stack[-1][0] <= start:
                    close()
                if stack:
                    stack[-1][3] += duration
                stack.append([start + duration, name, duration, 0])
            while stack:
                close()
    return own, calls


def kind(name: str, calls_per_iteration: float, row_calls: float) -> str:
    """The class of a compiled operation (see the module docstring)."""
    if calls_per_iteration >= row_calls:
        return "per-row"
    if name.startswith("copy"):
        return "copies"
    if name.startswith(("ynn_fusion", "dot")):
        return "products"
    if name.startswith(("while", "cond", "ThunkExecutor", "SlinkyThreadPool")):
        return "loop"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "orl_faces.npz"))
    ap.add_argument("--method", default="ahals", help="a jnmf method name, or bench_orl's variants")
    ap.add_argument("--mode", default="single", choices=["single", "hybrid", "vmap", "map"])
    ap.add_argument("--fits", type=int, default=4)
    ap.add_argument("--slots", type=int, default=2, help="slots of a batched mode")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--row-calls", type=float, default=50.0,
                    help="an operation called this often per fit and iteration is per-row work")  # fmt: skip
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    Y = load_orl(args.data)
    k = 25
    L0, R0 = (jnp.asarray(a) for a in random_start(Y, k, 0, args.fits))
    problem = build_problem(jnp.asarray(Y), k)
    rule = jfit.make_rule(rule_of(args.method))
    stop = Stopping(max_iterations=args.iterations, tol=0.0)

    def run():
        if args.mode == "single":
            return [
                jax.block_until_ready(
                    iterate(rule, problem, rule.init(problem, L0[i], R0[i]), stopping=stop, history_size=1)
                )  # fmt: skip
                for i in range(args.fits)
            ]
        return jax.block_until_ready(
            run_restarts(
                rule,
                problem,
                L0,
                R0,
                stopping=stop,
                history_size=1,
                strategy=args.mode,
                slots=None if args.mode == "map" else args.slots,
                groups=1,
            )  # fmt: skip
        )

    run()
    walls, cpus = [], []
    for _ in range(3):
        c, t = time.process_time(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    fit_iterations = args.fits * args.iterations
    print(f"jax {jax.__version__}; {args.method} {args.mode} ({args.fits} fits x {args.iterations} "
          f"iterations, ORL float32, rank {k}); load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"untraced, best of 3: {1e3 * min(walls) / fit_iterations:.2f} ms wall, "
          f"{1e3 * min(cpus) / fit_iterations:.2f} ms CPU per fit and iteration "
          "(start and end included)")  # fmt: skip

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        run()
        jax.profiler.stop_trace()
        own, calls = exclusive_times(trace_dir)
    ops = {n: t for n, t in own.items() if not n.startswith(HOST_EVENTS) and not n.startswith("end:")}
    total = sum(ops.values())
    classes = collections.Counter()
    for name, t in ops.items():
        classes[kind(name, calls[name] / fit_iterations, args.row_calls)] += t
    per_iteration = total / 1e6 / fit_iterations
    print(f"\ntraced: {per_iteration:.2f} ms of operations per fit and iteration (all threads)")
    print(f"{'class':<10} {'ms/iter':>8} {'share':>6}")
    for name, t in classes.most_common():
        print(f"{name:<10} {t / 1e6 / fit_iterations:>8.3f} {t / total:>6.1%}")
    print(f"\n{'operation':<44} {'class':<9} {'ms/iter':>8} {'calls/iter':>10} {'us/call':>8}")
    for name, t in sorted(ops.items(), key=lambda x: -x[1])[: args.top]:
        per = calls[name] / fit_iterations
        print(f"{re.sub(r'(.clone)+', '', name)[:44]:<44} {kind(name, per, args.row_calls):<9} "
              f"{t / 1e6 / fit_iterations:>8.3f} {per:>10.1f} {t / 1e3 / calls[name]:>8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
