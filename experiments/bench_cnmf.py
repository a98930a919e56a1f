"""cNMF (Kotliar et al. 2019; PyPI ``cnmf``) against ``jnmf.programs``, side by side in one run.

    python experiments/bench_cnmf.py [--cells 3000] [--genes 2000] [--hvg 1500] \
        [--ranks 7 8 9 10] [--replicates 20] [--cnmf-python /work/cnmf-venv/bin/python]

1. Simulates counts with 7 identity and 2 activity programs (experiments/simulate_counts.py,
   fixed seed).
2. Runs cNMF in its own virtualenv (experiments/_cnmf_side.py, 1 worker): prepare,
   factorize, combine + k_selection_plot, consensus at every rank (density threshold 0.5).
3. Runs ``jnmf.programs`` on cNMF's own prepared matrix (its HVGs scaled to unit variance),
   same ranks, replicates and density threshold, jnmf's defaults otherwise (ahals,
   rel_tol=1e-4, float32), compilation included.
4. Prints the time ratios (factorize; combine + consensus + K selection; end to end
   without cNMF's prepare), the accuracy of both against the truth (Pearson correlation
   of the consensus spectra with the true programs after Hungarian matching,
   scipy.optimize.linear_sum_assignment; the same for the usages), each stability curve's
   preferred K, and how converged the replicates are (median error of a replicate's
   spectra with NNLS-refit usages; mean local density of the L2-normalised replicate
   spectra, the spread the density filter sees).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simulate_counts import simulate  # noqa: E402

import jnmf  # noqa: E402
from jnmf.programs import (  # noqa: E402
    DEFAULT_METHOD,
    DEFAULT_REL_TOL,
    DEFAULT_TOL,
    _l2_rows,
    _pairwise_distances,
    local_density,
)
from jnmf.rules.fixed import nnls_fixed  # noqa: E402


def _corr(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of A with every row of B."""
    A = A - A.mean(axis=1, keepdims=True)
    B = B - B.mean(axis=1, keepdims=True)
    A = A / np.linalg.norm(A, axis=1, keepdims=True)
    B = B / np.linalg.norm(B, axis=1, keepdims=True)
    return A @ B.T


def accuracy(spectra, usages, true_spectra, true_usages) -> dict:
    """Spectra matched to the truth by the Hungarian method on their correlation."""
    C = _corr(spectra, true_spectra)
    rows, cols = linear_sum_assignment(-C)
    matched = C[rows, cols]
    U = _corr(usages.T[rows], true_usages.T[cols])
    return {
        "spectra_mean": float(matched.mean()),
        "spectra_min": float(matched.min()),
        "usage_mean": float(np.mean(np.diag(U))),
        "usage_min": float(np.min(np.diag(U))),
    }


def replicate_quality(X: np.ndarray, replicate_spectra: np.ndarray, k: int, neighbors: float = 0.3) -> dict:
    """Median error of each replicate's spectra with NNLS usages, and the replicate spread."""
    R = replicate_spectra.reshape(-1, k, X.shape[1])
    errors = [np.linalg.norm(X - nnls_fixed(X, H) @ H) for H in R]
    S = _l2_rows(replicate_spectra)
    spread = local_density(_pairwise_distances(S), int(round(neighbors * R.shape[0])))
    return {"error_median": float(np.median(errors)), "spread_mean": float(spread.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--hvg", type=int, default=1500)
    parser.add_argument("--ranks", type=int, nargs="+", default=[7, 8, 9, 10])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--method", default=DEFAULT_METHOD, help="jnmf's method")
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL, help="jnmf's tol")
    parser.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL, help="jnmf's rel_tol")
    parser.add_argument("--out", default="/tmp/bench_cnmf")
    parser.add_argument("--cnmf-python", default="/work/cnmf-venv/bin/python")
    parser.add_argument(
        "--skip-cnmf", action="store_true", help="reuse OUT/cnmf_side.npz from an earlier run"
    )
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)

    sim = simulate(args.cells, args.genes, seed=args.seed)
    sim_path = os.path.join(args.out, "sim.npz")
    np.savez(sim_path, **sim)
    print(
        f"simulated {args.cells} cells x {args.genes} genes, {sim['profiles'].shape[0]} programs", flush=True
    )

    if not args.skip_cnmf:
        cmd = [args.cnmf_python, os.path.join(os.path.dirname(__file__), "_cnmf_side.py"), sim_path, args.out]
        cmd += [
            "--ranks",
            *map(str, args.ranks),
            "--replicates",
            str(args.replicates),
            "--genes",
            str(args.hvg),
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"cNMF side: {time.perf_counter() - t:.1f} s wall", flush=True)
    cn = np.load(os.path.join(args.out, "cnmf_side.npz"))
    with open(os.path.join(args.out, "cnmf_times.json")) as f:
        cn_times = json.load(f)
    X = cn["X"]
    hvg = cn["hvg"]
    print(
        f"cNMF's prepared matrix: {X.shape[0]} cells x {X.shape[1]} HVGs, {np.mean(X > 0):.0%} non-zero",
        flush=True,
    )
    print(f"load average before jnmf: {os.getloadavg()}", flush=True)

    res = jnmf.programs(
        X, args.ranks, args.replicates, key=args.seed, method=args.method, tol=args.tol, rel_tol=args.rel_tol
    )
    jn_times = res.seconds

    # the truth in the prepared matrix's units: cNMF scales each HVG's counts by a constant
    counts = sim["counts"][:, hvg].astype(np.float64)
    scale = np.array(
        [np.median(X[counts[:, j] > 0, j] / counts[counts[:, j] > 0, j]) for j in range(len(hvg))]
    )
    true_spectra = sim["profiles"][:, hvg] * scale[None, :]
    true_usages = sim["usages"]

    print(
        "\nsettings: ranks",
        args.ranks,
        "replicates",
        args.replicates,
        "density threshold 0.5, neighbours 0.30",
    )
    print(
        f"jnmf: {res.settings['method']} tol={res.settings['tol']} rel_tol={res.settings['rel_tol']} "
        f"max_iterations={res.settings['max_iterations']} {res.settings['dtype']} "
        f"strategy={res.settings['strategy']}, {res.compilations} compilations"
    )
    print("cNMF: scikit-learn cd, tol=1e-4, max_iter=1000, float64 (its defaults)\n")
    print("rank | stability cNMF / jnmf | error cNMF / jnmf | spectra r mean/min cNMF | jnmf", end="")
    print(" | usage r cNMF | jnmf")
    rows = []
    for i, k in enumerate(args.ranks):
        e = res[k]
        jn_acc = accuracy(e.consensus, e.usages, true_spectra, true_usages)
        cn_err = float(np.sqrt(cn["error_squared"][i]))
        if f"spectra_{k}" in cn.files:
            cn_acc = accuracy(cn[f"spectra_{k}"], cn[f"usages_{k}"], true_spectra, true_usages)
        else:
            cn_acc = dict.fromkeys(jn_acc, float("nan"))
        cn_q = replicate_quality(X, cn[f"replicates_{k}"], k)
        jn_q = replicate_quality(X, e.replicate_spectra, k)
        rows.append((k, cn_acc, jn_acc, cn_q, jn_q))
        print(
            f"{k:4d} | {cn['stability'][i]:.3f} / {e.stability:.3f} | {cn_err:.1f} / {e.error:.1f} | "
            f"{cn_acc['spectra_mean']:.3f}/{cn_acc['spectra_min']:.3f} | "
            f"{jn_acc['spectra_mean']:.3f}/{jn_acc['spectra_min']:.3f} | "
            f"{cn_acc['usage_mean']:.3f} | {jn_acc['usage_mean']:.3f}"
        )
    print("\nreplicates: median error (NNLS usages) cNMF / jnmf | mean spread cNMF / jnmf | jnmf iterations")
    for k, _, _, cq, jq in rows:
        it = res[k].iterations
        print(
            f"{k:4d} | {cq['error_median']:.2f} / {jq['error_median']:.2f} | "
            f"{cq['spread_mean']:.4f} / {jq['spread_mean']:.4f} | median {np.median(it):.0f} "
            f"({it.min()}-{it.max()})"
        )
    print(
        f"\npreferred K (max stability): cNMF {args.ranks[int(np.argmax(cn['stability']))]}, "
        f"jnmf {res.best_rank} (truth {sim['profiles'].shape[0]})"
    )
    cn_consensus = cn_times["combine_kselection"] + cn_times["consensus_all_ranks"]
    cn_total = cn_times["factorize"] + cn_consensus
    jn_total = jn_times["factorize"] + jn_times["consensus"]
    print("\ntimes (s)            cNMF      jnmf     ratio")
    for name, a, b in (
        ("factorize", cn_times["factorize"], jn_times["factorize"]),
        ("consensus+K sel", cn_consensus, jn_times["consensus"]),
        ("end to end", cn_total, jn_total),
    ):
        print(f"{name:15s} {a:9.1f} {b:9.1f} {a / b:8.1f}x")
    print(
        f"(cNMF prepare {cn_times['prepare']:.1f} s, not counted; cNMF combine + k_selection_plot "
        f"{cn_times['combine_kselection']:.1f} s, consensus at every rank "
        f"{cn_times['consensus_all_ranks']:.1f} s)"
    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
