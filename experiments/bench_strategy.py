"""Is ``jnmf.batch.batching_strategy``'s choice right?  Every strategy timed on several shapes.

For each shape and method, B restarts run a fixed number of iterations (no early stop)
as ONE ``run_restarts`` program under each strategy, ``"vmap"``, ``"hybrid"`` and
``"map"``, interleaved (one repeat of each in turn) so that load on a shared machine
hits them alike; the median of ``--repeats`` is reported (compile excluded).  The last
columns name the strategy :func:`jnmf.batch.batching_strategy` picks for the shape and
how far its time is from the fastest ("chosen / best": 1.00 when it picks the fastest).

Shapes (``--shapes``; float32):

* ``orl``: ORL faces, 10304 x 400, rank 25 (pixels x images, scaled to [0, 1]);
* ``tall``: 6000 x 2000, rank 9 (a random non-negative rank-9 product plus noise);
* ``mid``: 1000 x 500, rank 10 (the same kind);
* ``golub``: Golub ALL/AML, 5000 x 38, rank 3;
* ``name:k``: one of these at rank k (e.g. ``mid:100``).

    python experiments/bench_strategy.py                      # all shapes, hals ahals mu kl
    python experiments/bench_strategy.py --shapes tall --methods hals --restarts 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jnmf.batch import STRATEGIES, batching_strategy, run_restarts  # noqa: E402
from jnmf.driver import Stopping  # noqa: E402
from jnmf.problem import build_problem  # noqa: E402
from jnmf.rules import make_rule  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(open("/proc/loadavg").read().split()[:3])


def low_rank(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """A non-negative rank-k product plus 1% uniform noise, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    Y = rng.random((m, k)) @ rng.random((k, n)) + 0.01 * k * rng.random((m, n))
    return (Y / Y.max()).astype(np.float32)


def load_shape(spec: str) -> tuple[np.ndarray, int]:
    """The data and rank of a named case; ``name:k`` sets another rank."""
    name, _, rank = spec.partition(":")
    Y, k = load_named(name)
    return Y, int(rank) if rank else k


def load_named(name: str) -> tuple[np.ndarray, int]:
    """The data and default rank of a named case."""
    if name == "orl":
        with np.load(os.path.join(HERE, "..", "..", "shared", "data", "orl_faces.npz")) as d:
            images = d["images"]
        return (images.reshape(images.shape[0], -1).T / 255.0).astype(np.float32), 25
    if name == "tall":
        return low_rank(6000, 2000, 9), 9
    if name == "mid":
        return low_rank(1000, 500, 10), 10
    from jnmf.datasets import load_golub

    Y = np.asarray(load_golub().expression, np.float32)
    return Y / Y.max(), 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["orl", "tall", "mid", "golub"])
    ap.add_argument("--methods", nargs="+", default=["hals", "ahals", "mu", "kl"])
    ap.add_argument("--restarts", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    args = ap.parse_args()

    B = args.restarts
    print(f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} CPUs); {B} restarts x "
          f"{args.iterations} iterations, median of {args.repeats}; load average {load()}")  # fmt: skip
    head = " ".join(f"{s + ' s':>9}" for s in args.strategies)
    print(f"{'shape':>18} {'method':>6} {head} {'best':>7} {'chosen':>7} {'chosen/best':>11}")
    stop = Stopping(max_iterations=args.iterations, tol=0.0, min_xstep=0.0)
    for shape in args.shapes:
        Y, k = load_shape(shape)
        m, n = Y.shape
        problem = build_problem(jnp.asarray(Y), k)
        rng = np.random.default_rng(0)
        s = np.sqrt(Y.mean() / k)
        L0 = jnp.asarray(np.abs(rng.standard_normal((B, m, k))) * s, jnp.float32)
        R0 = jnp.asarray(np.abs(rng.standard_normal((B, k, n))) * s, jnp.float32)
        for method in args.methods:
            rule = make_rule(method)

            def run(strategy, rule=rule, L0=L0, R0=R0, problem=problem):
                res = run_restarts(rule, problem, L0, R0, stopping=stop, history_size=1, strategy=strategy)
                return jax.block_until_ready(res.L)

            for strategy in args.strategies:
                run(strategy)  # compile
            times = {strategy: [] for strategy in args.strategies}
            for _ in range(args.repeats):
                for strategy in args.strategies:
                    t = time.perf_counter()
                    run(strategy)
                    times[strategy].append(time.perf_counter() - t)
            med = {strategy: statistics.median(ts) for strategy, ts in times.items()}
            fastest = min(med, key=med.get)
            chosen = batching_strategy(rule, "cpu", problem=problem, rank=k, fits=B)
            ratio = med[chosen] / med[fastest] if chosen in med else float("nan")
            cols = " ".join(f"{med[s]:>9.3f}" for s in args.strategies)
            label = f"{shape} {m}x{n} k{k}"
            print(f"{label:>18} {method:>6} {cols} {fastest:>7} {chosen:>7} {ratio:>11.2f}", flush=True)
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
