"""Accelerated HALS's ``alpha`` for the extrapolated default (method ``"ahals"``).

For each matrix: the target is a relative Frobenius error (ORL: 0.1755, issue 15's; the
others: what plain accelerated HALS, alpha 0.2, reaches in ``--ref-iterations``); for plain
accelerated HALS and for ``HALS(inner_sweeps=None, alpha=a, extrapolate=True)`` at every
``--alphas`` it prints the iterations to the target (from one history, confirmed with the
residual) and the wall and process-CPU seconds of a compiled fit of exactly that many
iterations (best of ``--repeats``), with the load average and UTC time.

Run:  python experiments/tune_ahals_alpha.py [--data ../shared/data] [--matrices orl random golub]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import jax
import numpy as np

import jnmf
from jnmf.rules import HALS

HERE = os.path.dirname(os.path.abspath(__file__))


def matrices(names, data_dir):
    rng = np.random.default_rng(0)
    for name in names:
        if name == "orl":
            images = np.load(os.path.join(data_dir, "orl_faces.npz"))["images"]
            yield name, (images.reshape(images.shape[0], -1).T / 255.0).astype(np.float32), 25, 0.1755
        elif name == "random":  # synthetic 2000 x 1000, rank 20, plus noise
            Y = rng.random((2000, 20)) @ rng.random((20, 1000)) + 0.5 * rng.random((2000, 1000))
            yield name, Y.astype(np.float32), 20, None
        elif name == "golub":
            d = np.load(os.path.join(data_dir, "golub_all_aml.npz"))
            key = [k for k in d.files if d[k].ndim == 2][0]
            yield name, np.asarray(d[key], np.float32), 3, None


def errors(Y, res) -> np.ndarray:
    h = np.asarray(res.history, np.float64)[: int(res.iterations)]
    return np.sqrt(np.maximum(2 * h, 0)) / np.linalg.norm(Y)


def run(Y, k, rule, L0, R0, iters, history=1):
    with warnings.catch_warnings():  # a fixed count of iterations on purpose
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        res = jnmf.fit(Y, k, method=rule, init=(L0, R0), max_iterations=iters, tol=0.0, history_size=history)
    jax.block_until_ready(res.L)
    return res


def rel_err(Y, res) -> float:
    Y64 = np.asarray(Y, np.float64)
    LR = np.asarray(res.L, np.float64) @ np.asarray(res.R, np.float64)
    return float(np.linalg.norm(Y64 - LR) / np.linalg.norm(Y64))


def iterations_to(Y, k, rule, L0, R0, target, cap):
    hits = np.nonzero(errors(Y, run(Y, k, rule, L0, R0, cap, history=cap)) <= target)[0]
    if hits.size == 0:
        return None
    n = int(hits[0]) + 1
    while rel_err(Y, run(Y, k, rule, L0, R0, n)) > target and n < cap:  # the history is float32
        n += 1
    return n


def timed(fn, repeats):
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    ap.add_argument("--matrices", nargs="+", default=["orl", "random"])
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    ap.add_argument("--ref-iterations", type=int, default=100)
    ap.add_argument("--cap", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    stamp = lambda: f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load average {os.getloadavg()}"
    print(f"start {time.strftime('%Y-%m-%d', time.gmtime())} {stamp()}")
    for name, Y, k, target in matrices(args.matrices, args.data):
        rng = np.random.default_rng(0)
        s = np.sqrt(Y.mean() / k)
        L0 = (np.abs(rng.standard_normal((Y.shape[0], k))) * s).astype(np.float32)
        R0 = (np.abs(rng.standard_normal((k, Y.shape[1]))) * s).astype(np.float32)
        plain = HALS(inner_sweeps=None, alpha=0.2)
        if target is None:
            target = rel_err(Y, run(Y, k, plain, L0, R0, args.ref_iterations))
        shape = f"{Y.shape[0]} x {Y.shape[1]}, rank {k}"
        print(f"\n== {name} {shape}: to relative error {target:.6f} ({stamp()})")
        print(f"{'rule':>28} {'iters':>5} {'wall s':>8} {'cpu s':>8}")
        rules = [("ahals-plain alpha 0.2", plain)]
        for a in args.alphas:
            rules.append((f"extrapolated alpha {a}", HALS(inner_sweeps=None, alpha=a, extrapolate=True)))
        for label, rule in rules:
            n = iterations_to(Y, k, rule, L0, R0, target, args.cap)
            if n is None:
                print(f"{label:>28} {'-':>5}")
                continue
            wall, cpu = timed(lambda: run(Y, k, rule, L0, R0, n), args.repeats)
            print(f"{label:>28} {n:>5} {wall:>8.3f} {cpu:>8.3f}", flush=True)
    print(f"\nend {stamp()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
