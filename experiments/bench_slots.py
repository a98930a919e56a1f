"""Slots x skipping: batched restarts of "hybrid" with and without finished fits skipping
their half steps, for several slot counts, in one run (issue 15, part 2).

The restarts of ``bench_restarts.py`` (ORL, rank 25, float32, each to relative error
0.1755), batched as ``"hybrid"`` through ``S`` slots, from the same starting states:
"skip" is the library's loop program (``jnmf.batch._restarts``: a finished fit, or a
retired slot, skips its half steps, ``jnmf.batch._loop_over_active``), "no skip" the same
loop with every fit's half steps run (``lax.map``, as before the change; built here from
the same pieces).  Every run gives the same iterations and, up to float32 rounding,
objectives (checked).  Runs are interleaved, medians of ``--repeats``, compile excluded;
CPU time (``time.process_time``, both cores) beside wall time; load average printed.

    python experiments/bench_slots.py --restarts 32 --slots 2 4 8 16 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _bench_env import clean_blas_env

clean_blas_env()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_orl import TARGET, load_orl, random_start, rule_of  # noqa: E402

from jnmf import fitting as jfit  # noqa: E402
from jnmf.batch import _loop_over_fits, _prepare, _restarts  # noqa: E402
from jnmf.driver import Stopping, iterate_impl  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.rules.base import alternate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@eqx.filter_jit
def _no_skip(rule, problem, states, opts, slots):
    """The "hybrid" loop with every fit's half steps run (active=None)."""
    step = lambda p, s, active: alternate(rule, p, s, shared=jax.vmap, solo=_loop_over_fits)
    return iterate_impl(rule, problem, states, *opts, 1, None, batched=True, batched_step=step, slots=slots)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "orl_faces.npz"))
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--method", default="ahals")
    ap.add_argument("--slots", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--modes", nargs="+", default=["skip", "no skip"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cap", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    B, k = args.restarts, 25
    print(f"jax {jax.__version__}; load average {os.getloadavg()}")
    Y = load_orl(args.data)
    L0, R0 = (jnp.asarray(a) for a in random_start(Y, k, args.seed, B))
    target = 0.5 * (TARGET * float(np.linalg.norm(Y.astype(np.float64)))) ** 2
    stop = Stopping(max_iterations=args.cap, tol=0.0, target=target)
    problem = build_problem(jnp.asarray(Y), k)
    rule = jfit.make_rule(rule_of(args.method))
    states, opts, _ = _prepare(rule, problem, L0, R0, stop, {}, 1, None, "hybrid")

    runs = {}
    for S in args.slots:
        if "skip" in args.modes:
            runs[f"skip S={S}"] = lambda S=S: _restarts(
                rule, problem, states, opts, 1, None, "hybrid", None, S
            )
        if "no skip" in args.modes:
            runs[f"no skip S={S}"] = lambda S=S: _no_skip(rule, problem, states, opts, S)
    first = None
    for label, fn in runs.items():  # compile; every run gives the same fits
        res = jax.block_until_ready(fn())
        its = np.asarray(res.iterations)
        if first is None:
            first = res
            span = f"{its.min()}/{int(np.median(its))}/{its.max()}"
            print(f"iterations min/median/max {span}, total {its.sum()}")
        assert np.array_equal(its, np.asarray(first.iterations)), label
        # float32: S changes how the products are stacked, so rounding differs a little
        np.testing.assert_allclose(np.asarray(res.objective), np.asarray(first.objective), rtol=1e-3)
    wall = {label: [] for label in runs}
    cpu = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            wall[label].append(time.perf_counter() - t)
            cpu[label].append(time.process_time() - c)
        print(f"  (repeat done, load average {os.getloadavg()})", flush=True)
    print(f"{'run':<16} {'wall s':>8} {'cpu s':>8}")
    for label in runs:
        print(f"{label:<16} {statistics.median(wall[label]):>8.2f} {statistics.median(cpu[label]):>8.2f}")
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
