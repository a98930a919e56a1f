"""cNMF's side of experiments/bench_cnmf.py: run in cNMF's own virtualenv (PyPI ``cnmf``).

    /work/cnmf-venv/bin/python experiments/_cnmf_side.py SIM.npz OUTDIR --ranks 7 8 9 10 \
        --replicates 20 --genes 1500

Writes the counts as .h5ad, runs cNMF's prepare, factorize (1 worker), combine,
k_selection_plot and consensus (at every rank, cNMF's default density threshold 0.5 and
neighbourhood 0.30) through its Python API, timing each step, and exports what the
jnmf side needs to ``OUTDIR/cnmf_side.npz``: the prepared (normalised) matrix, the HVG
indices, the per-rank stability and squared error, consensus spectra and usages, replicate spectra.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from cnmf import cNMF


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sim")
    parser.add_argument("out")
    parser.add_argument("--ranks", type=int, nargs="+", default=[7, 8, 9, 10])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--genes", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--density-threshold", type=float, default=0.5)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sim = np.load(args.sim)
    counts = sim["counts"]
    cells, genes = counts.shape
    adata = anndata.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(cells)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]),
    )
    counts_fn = os.path.join(args.out, "counts.h5ad")
    adata.write_h5ad(counts_fn)

    times = {}
    obj = cNMF(output_dir=args.out, name="bench")
    t = time.perf_counter()
    obj.prepare(
        counts_fn, components=args.ranks, n_iter=args.replicates, seed=args.seed, num_highvar_genes=args.genes
    )
    times["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    obj.factorize(worker_i=0, total_workers=1)
    times["factorize"] = time.perf_counter() - t
    t = time.perf_counter()
    obj.combine()
    obj.k_selection_plot(close_fig=True)
    times["combine_kselection"] = time.perf_counter() - t
    t = time.perf_counter()
    failed = []
    for k in args.ranks:
        try:
            obj.consensus(
                k, density_threshold=args.density_threshold, show_clustering=False, close_clustergram_fig=True
            )
        except RuntimeError as e:  # every spectrum filtered out
            print(f"cNMF consensus at k={k} failed: {e}")
            failed.append(k)
    times["consensus_all_ranks"] = time.perf_counter() - t

    norm = anndata.read_h5ad(obj.paths["normalized_counts"])
    X = norm.X.toarray() if sp.issparse(norm.X) else np.asarray(norm.X)
    hvg = np.array([int(g[1:]) for g in norm.var_names])
    stats = pd.DataFrame(**_df(obj.paths["k_selection_stats"]))
    out = {"X": X.astype(np.float32), "hvg": hvg, "ranks": np.array(args.ranks)}
    out["stability"] = stats["silhouette"].to_numpy(float)
    out["error_squared"] = stats["prediction_error"].to_numpy(float)
    dt = str(args.density_threshold).replace(".", "_")
    for k in args.ranks:
        out[f"replicates_{k}"] = pd.DataFrame(**_df(obj.paths["merged_spectra"] % k)).to_numpy(float)
        if k in failed:
            continue
        out[f"spectra_{k}"] = pd.DataFrame(**_df(obj.paths["consensus_spectra"] % (k, dt))).to_numpy(float)
        out[f"usages_{k}"] = pd.DataFrame(**_df(obj.paths["consensus_usages"] % (k, dt))).to_numpy(float)
    np.savez(os.path.join(args.out, "cnmf_side.npz"), **out)
    with open(os.path.join(args.out, "cnmf_times.json"), "w") as f:
        json.dump(times, f)
    print(json.dumps(times))


def _df(path: str) -> dict:
    with np.load(path, allow_pickle=True) as d:
        return {"data": d["data"], "index": d["index"], "columns": d["columns"]}


if __name__ == "__main__":
    main()
