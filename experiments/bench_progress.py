"""Cost of progress reports from inside the compiled loop (jnmf.progress).

The same fit (fixed iteration count, tol=0) runs with reports off (the loop compiled
without any callback) and on at strides 1, 10 and 100 (one ordered
``jax.debug.callback`` per stride, to a listener that only counts).  Runs are
interleaved and repeated, and the median wall time of each setting is compared
with the off run's: ``ratio`` = on / off.

Data: ORL faces (10304 x 400, rank 25) when ``--data`` exists, else a random
2000 x 500 rank-25 matrix.  Two cases: one ``ahals`` fit (a single loop), and
8 ``mu`` restarts batched in one loop (the report reduces over the batch).

Run:  python experiments/bench_progress.py [--data ../shared/data/orl_faces.npz] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # a plain checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jnmf  # noqa: E402
from jnmf.batch import run_restarts  # noqa: E402
from jnmf.fitting import starting_points  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.progress import listening  # noqa: E402
from jnmf.rules import make_rule  # noqa: E402


class CountingListener:
    """Counts the reports it receives: the cheapest possible host side."""

    def __init__(self):
        self.reports = 0

    def update(self, iteration: int, objective: float, finished: int) -> None:
        self.reports += 1


def load_data(path: str) -> tuple[np.ndarray, str]:
    if os.path.exists(path):
        with np.load(path) as data:
            images = data["images"]
        Y = (images.reshape(images.shape[0], -1).T / 255.0).astype(np.float32)  # pixels x faces
        return Y, f"ORL faces {Y.shape[0]} x {Y.shape[1]}"
    rng = np.random.default_rng(0)
    Y = (rng.random((2000, 25)) @ rng.random((25, 500)) + 0.01 * rng.random((2000, 500))).astype(np.float32)
    return Y / Y.max(), "random 2000 x 500 (rank 25 + noise)"


def time_case(Y, method: str, restarts: int, iterations: int, repeats: int) -> None:
    rule = make_rule(method)
    problem = build_problem(jnp.asarray(Y), 25)
    L0, R0 = starting_points(problem.Y, 25, "random", restarts, jax.random.key(0))
    settings = {"off": None, "every 1": 1, "every 10": 10, "every 100": 100}

    def run(stride):
        listener = CountingListener()
        with listening(listener):
            res = run_restarts(
                rule, problem, L0, R0, max_iterations=iterations, tol=0.0, progress_every=stride
            )
            jax.block_until_ready(res.L)
        return listener.reports

    for stride in settings.values():  # compile each program (on: one program for every stride)
        run(stride)
    times: dict[str, list[float]] = {name: [] for name in settings}
    reports = {}
    for _ in range(repeats):
        for name, stride in settings.items():
            start = time.perf_counter()
            reports[name] = run(stride)
            times[name].append(time.perf_counter() - start)
    off = statistics.median(times["off"])
    fastest_off = min(times["off"])
    print(f"\n{method}, {restarts} restart(s), {iterations} iterations, median of {repeats}:")
    for name in settings:
        median = statistics.median(times[name])
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(
            f"  {name:>9}: {median:.3f} s (range {spread}), {reports[name]:>4} reports, "
            f"ratio {median / off:.3f} (median), {min(times[name]) / fastest_off:.3f} (fastest)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(os.path.dirname(__file__), "../../shared/data/orl_faces.npz")
    parser.add_argument("--data", default=default)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    Y, name = load_data(args.data)
    print(f"jnmf {jnmf.__version__}, jax {jax.__version__} on {jax.devices()[0].platform}; data: {name}")
    time_case(Y, "ahals", 1, args.iterations, args.repeats)
    time_case(Y, "mu", 8, args.iterations, args.repeats)


if __name__ == "__main__":
    main()
