"""Command line: ``python -m jnmf demo`` and ``python -m jnmf fit``.

``demo`` reproduces the classic rank-selection analysis of Brunet et al. (2004)
on the built-in Golub ALL/AML data: for each rank, many restarts of NMF run as
one compiled program, their consensus matrix, its cophenetic correlation, and
how the clusters at the chosen ranks line up with the known cell types.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _demo(args) -> int:
    import jax

    from .consensus import consensus
    from .datasets import load_golub

    data = load_golub()
    Y = np.asarray(data.expression, np.float32)
    types = data.cell_type
    counts = {str(t): int(c) for t, c in zip(*np.unique(types, return_counts=True))}
    print(f"Golub ALL/AML: {Y.shape[0]} genes x {Y.shape[1]} samples ({counts})")
    platform = jax.devices()[0].platform
    print(f"jax {jax.__version__} on {platform}; method={args.method}, restarts={args.restarts}\n")
    print(f"{'rank':>4}  {'cophenetic':>10}  {'best rel. error':>15}  {'seconds':>7}")
    results = {}
    for k in args.ranks:
        t = time.perf_counter()
        c = consensus(Y, k, restarts=args.restarts, method=args.method, key=jax.random.key(args.seed),
                      max_iterations=args.max_iterations)  # fmt: skip
        best = int(np.argmin(np.asarray(c.objectives)))
        err = float(np.sqrt(2 * np.asarray(c.loss)[best]) / np.linalg.norm(Y))
        results[k] = c
        print(f"{k:>4}  {c.cophenetic:>10.4f}  {err:>15.4f}  {time.perf_counter() - t:>7.2f}")
    for k in [k for k in (2, 3) if k in results]:
        labels = np.asarray(results[k].labels)
        print(f"\nrank {k}: clusters of the best restart vs. cell type")
        names = sorted(set(types))
        print("cluster  " + "  ".join(f"{n:>6}" for n in names))
        for c in range(k):
            counts = [int(np.sum((labels == c) & (types == n))) for n in names]
            print(f"{c:>7}  " + "  ".join(f"{x:>6}" for x in counts))
    print("\nA cophenetic correlation near 1 means the restarts agree on the clustering;"
          "\nBrunet et al. (2004) find ranks 2 (ALL vs AML) and 3 (ALL-B, ALL-T, AML) stable.")  # fmt: skip
    return 0


def _load_matrix(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    if path.endswith(".npz"):
        d = np.load(path)
        return d[d.files[0]]
    return np.loadtxt(path, delimiter=",")


def _fit(args) -> int:
    import jax

    from .fitting import fit

    Y = np.asarray(_load_matrix(args.input), np.float32 if not args.float64 else np.float64)
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    res = fit(Y, args.rank, method=args.method, restarts=args.restarts, key=jax.random.key(args.seed),
              max_iterations=args.max_iterations, tol=args.tol)  # fmt: skip
    np.savez(args.output, L=np.asarray(res.L), R=np.asarray(res.R), objectives=np.asarray(res.objectives))
    print(f"objective {float(res.objective):.6g} after {int(res.iterations)} iterations; wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jnmf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="rank selection on the built-in Golub ALL/AML data")
    d.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4, 5])
    d.add_argument("--restarts", type=int, default=20)
    d.add_argument("--method", default="kl", help="default: KL divergence, as Brunet et al.")
    d.add_argument("--max-iterations", type=int, default=500)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    f = sub.add_parser("fit", help="factor a matrix from .npy, .npz or .csv")
    f.add_argument("input")
    f.add_argument("--rank", type=int, required=True)
    f.add_argument("--output", default="factors.npz")
    f.add_argument("--method", default="hals")
    f.add_argument("--restarts", type=int, default=1)
    f.add_argument("--max-iterations", type=int, default=500)
    f.add_argument("--tol", type=float, default=1e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--float64", action="store_true")
    f.set_defaults(func=_fit)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
