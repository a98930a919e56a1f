"""Rank survey on Golub ALL/AML: jnmf.consensus against R's NMF package, side by side.

R: ``nmf(esGolub, 2:5, nrun=50, method="brunet", seed=123456)`` on one core
(experiments/golub_survey_R.R; needs R's NMF package).  jnmf: ``jnmf.consensus(Y,
[2, 3, 4, 5], restarts=50, method="kl")``, every (rank, restart) in one compiled program,
with R's seeding (entries uniform on (0, max Y]) and its stopping rule
(``nmf.stop.connectivity``: the clustering checked every 10 iterations, a restart
stops once it was unchanged at more than 40 checks in a row, or at 2000 iterations).

jnmf runs first, cold (this fresh process: compiling included), then warm (same
shapes, another key: nothing to compile); then R, never at the same time.  One table
side by side per rank: cophenetic correlation, dispersion and silhouette of the
consensus, samples off against the known cell types (the consensus clustering, each
cluster counted as its majority type: at rank 2 ALL vs AML, at ranks >= 3 ALL-B /
ALL-T / AML) and the restarts' iterations; then the wall times and their ratio.
``--seeds`` adds warm surveys with more keys (the sampling noise of the statistics).
``--strategies`` also times warm surveys with other batching strategies (e.g. ``vmap``:
one batched loop whose slots are refilled as restarts stop, ``jnmf.batch.restart_slots``)
against the default one, side by side in this run.  ``--groups`` times warm surveys with
each count of concurrent groups (``JNMF_CPU_GROUPS``; 1: one program, as before
concurrent groups), alternating with the default (chosen) count, the same key.

    python experiments/bench_golub_survey.py [--nrun 50] [--ranks 2 5] [--seeds 3]
        [--init uniform|random] [--strategies vmap] [--groups 1] [--r-output saved.txt | --skip-r]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import jnmf  # noqa: E402

R_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golub_survey_R.R")


def samples_off(labels, cell_types, rank: int) -> int:
    """Samples outside their cluster's majority class: ALL vs AML at rank 2, the three
    cell types (ALL-B, ALL-T, AML) at higher ranks."""
    labels, types = np.asarray(labels), np.asarray(cell_types).astype(str)
    classes = np.where(types == "AML", "AML", "ALL") if rank == 2 else types
    return sum(
        int(np.sum(labels == c))
        - max(int(np.sum((labels == c) & (classes == t))) for t in np.unique(classes))
        for c in np.unique(labels)
    )


def parse_r(text: str) -> dict:
    """The lines of golub_survey_R.R: seconds, cell types, per-rank statistics and labels."""
    out = {"seconds": float("nan"), "cells": None, "ranks": {}, "labels": {}}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "R-seconds":
            out["seconds"] = float(parts[1])
        elif parts[0] == "R-cells":
            out["cells"] = np.array(parts[1:])
        elif parts[0] == "R-rank":
            coph, disp, sil = map(float, parts[2:5])
            its = tuple(int(x) for x in parts[5:8])
            out["ranks"][int(parts[1])] = (coph, disp, sil, its)
        elif parts[0] == "R-labels":
            out["labels"][int(parts[1])] = np.array([int(x) for x in parts[2:]])
    return out


def run_r(lo: int, hi: int, nrun: int, seed: int) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run(["Rscript", R_SCRIPT, str(lo), str(hi), str(nrun), str(seed)], capture_output=True,
                         text=True, env=env, check=True).stdout  # fmt: skip
    return parse_r(out)


def iters(its) -> str:
    its = np.asarray(its)
    return f"{int(np.median(its))}/{int(its.min())}/{int(its.max())}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nrun", type=int, default=50, help="restarts per rank (R's nrun), default 50")
    ap.add_argument("--ranks", type=int, nargs=2, default=[2, 5])
    ap.add_argument("--seed", type=int, default=123456, help="R's seed and jnmf's cold key")
    ap.add_argument("--seeds", type=int, default=0, help="extra warm jnmf surveys with keys 1..SEEDS")
    ap.add_argument(
        "--init", default="uniform", help="jnmf's starts: uniform (R's seeding, default) or random"
    )
    ap.add_argument("--skip-r", action="store_true")
    ap.add_argument("--strategies", nargs="*", default=[], help="also time warm surveys with these")
    ap.add_argument("--groups", nargs="*", type=int, default=[], help="also time warm surveys so grouped")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the --groups comparison")
    ap.add_argument("--r-output", help="read R's results from this saved output of golub_survey_R.R")
    args = ap.parse_args()
    lo, hi = args.ranks
    ranks = list(range(lo, hi + 1))
    golub = jnmf.load_golub()
    Y = np.asarray(golub.expression, np.float32)
    cells = np.asarray(golub.cell_type).astype(str)

    cold = jnmf.consensus(Y, ranks, restarts=args.nrun, key=args.seed, init=args.init)
    t = time.perf_counter()
    warm = jnmf.consensus(Y, ranks, restarts=args.nrun, key=7, init=args.init)
    t_warm = time.perf_counter() - t
    extra = [
        jnmf.consensus(Y, ranks, restarts=args.nrun, key=s, init=args.init) for s in range(1, args.seeds + 1)
    ]
    by_strategy = {}  # strategy -> warm seconds (compiled first, same key as the warm run)
    for strategy in args.strategies:
        jnmf.consensus(Y, ranks, restarts=args.nrun, key=args.seed, init=args.init, strategy=strategy)
        t = time.perf_counter()
        jnmf.consensus(Y, ranks, restarts=args.nrun, key=7, init=args.init, strategy=strategy)
        by_strategy[strategy] = (time.perf_counter() - t, open("/proc/loadavg").read().split()[0])

    by_groups = {}  # JNMF_CPU_GROUPS -> warm seconds, alternating with the chosen count
    for groups in args.groups:
        for value in (str(groups), ""):  # "": the chosen count (compiled first, then timed)
            os.environ["JNMF_CPU_GROUPS"] = value
            jnmf.consensus(Y, ranks, restarts=args.nrun, key=args.seed, init=args.init)
        for _ in range(args.repeats):
            for value in (str(groups), ""):
                os.environ["JNMF_CPU_GROUPS"] = value
                t = time.perf_counter()
                jnmf.consensus(Y, ranks, restarts=args.nrun, key=7, init=args.init)
                by_groups.setdefault(value or "chosen", []).append(
                    (time.perf_counter() - t, open("/proc/loadavg").read().split()[0])
                )
        os.environ.pop("JNMF_CPU_GROUPS")

    r = None
    if args.r_output:
        with open(args.r_output) as fh:
            r = parse_r(fh.read())
    elif not args.skip_r:
        r = run_r(lo, hi, args.nrun, args.seed)
    if r is not None and r["cells"] is not None and not np.array_equal(r["cells"], cells):
        print("WARNING: R's sample order differs from jnmf.load_golub()'s")

    print(
        f"Golub ALL/AML (5000 x 38), ranks {lo}-{hi}, {args.nrun} restarts per rank; KL / brunet;"
        f" jnmf init {args.init}, key {args.seed} (cold); R seed {args.seed}"
    )
    head = ("cophenetic", "dispersion", "silhouette")
    print(
        f"{'rank':>4} | "
        + " | ".join(f"{h:^15}" for h in head)
        + f" | {'samples off':^11} | {'iterations':^27}"
    )
    pair = f"{'jnmf':>7} {'R':>7}"
    print(f"{'':>4} | {pair} | {pair} | {pair} | {'jnmf':>5} {'R':>5} | {'jnmf':>13} {'R':>13}")
    for e in cold:
        coph, disp, sil, its_r, off_r = np.nan, np.nan, np.nan, "-", "-"
        if r is not None and e.rank in r["ranks"]:
            coph, disp, sil, its = r["ranks"][e.rank]
            its_r = "/".join(map(str, its))
            off_r = str(samples_off(r["labels"][e.rank], cells, e.rank))
        both = ((e.cophenetic, coph), (e.dispersion, disp), (e.silhouette, sil))
        stats = " | ".join(f"{a:>7.4f} {b:>7.4f}" for a, b in both)
        off = samples_off(e.labels, cells, e.rank)
        print(f"{e.rank:>4} | {stats} | {off:>5} {off_r:>5} | {iters(e.iterations):>13} {its_r:>13}")
    print("  (iterations: median/min/max over the restarts)")
    if extra:
        surveys = [cold, warm, *extra]
        print(f"jnmf across {len(surveys)} keys ({args.seed}, 7, 1..{args.seeds}): mean +- sd [min, max]")
        for i, rank in enumerate(ranks):
            for name in ("cophenetic", "dispersion"):
                v = np.array([getattr(s, name)[i] for s in surveys])
                each = " ".join(f"{x:.4f}" for x in v)
                spread = f"{v.mean():.4f} +- {v.std(ddof=1):.4f} [{v.min():.4f}, {v.max():.4f}]"
                print(f"  rank {rank} {name:<10} {spread}  ({each})")
            offs = [samples_off(s.entries[i].labels, cells, rank) for s in surveys]
            print(f"  rank {rank} samples off {offs}")
    print(f"jnmf: cold {cold.seconds:.1f} s ({cold.compilations} XLA compilations),"
          f" warm {t_warm:.1f} s ({warm.compilations} compilations)")  # fmt: skip
    for strategy, (seconds, load) in by_strategy.items():
        print(f"jnmf warm with strategy={strategy!r}: {seconds:.1f} s"
              f" (default / this = {t_warm / seconds:.2f}x; load average {load})")  # fmt: skip
    for value, runs in by_groups.items():
        times = ", ".join(f"{t:.1f} s (load {a})" for t, a in runs)
        print(f"jnmf warm with JNMF_CPU_GROUPS={value}: {times}")
    if r is not None:
        print(f"R NMF (brunet, one core, sequential): {r['seconds']:.1f} s -> R / jnmf = "
              f"{r['seconds'] / cold.seconds:.1f}x cold, {r['seconds'] / t_warm:.1f}x warm")  # fmt: skip


if __name__ == "__main__":
    main()
