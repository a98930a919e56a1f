"""Sparse NMF side by side: jnmf vs scikit-learn (cd, mu) vs RcppML (issue 12, part 5).

The case: ``scipy.sparse.random(100000, 20000, density=0.002, format="csr",
dtype=float32, random_state=0)`` (4e6 stored entries), rank 20, random starts.  One run
measures, for every method on the same matrix:

* **time per iteration**: jnmf (ahals, hals, mu; float32): ``(t(N) - t(1)) / (N - 1)``
  of compiled calls (compilation excluded: one call first), plus ``t(N) / N``;
  scikit-learn: the time of its trajectory (below) divided by its iterations; RcppML:
  ``(t(N) - t(N0)) / (N - N0)`` timed inside R (``system.time``; R start-up and reading
  the matrix excluded);
* **time to a common relative error** ``||Y - LR||_F / ||Y||_F``: the target is the
  error scikit-learn cd reaches after ``--cd-iterations`` (200) iterations times 1.001
  (0.1% above), unless some method does not reach it (then the loosest method's best
  error, said so).  scikit-learn: a trajectory of chunks of ``--chunk`` iterations
  continued with ``init="custom"`` (cd and mu carry no state besides W and H, so this is
  the same iteration sequence), the error computed between chunks outside the timing,
  and the time to the target interpolated linearly inside the chunk that crosses it.
  RcppML: runs of increasing ``maxit`` from the same seed (the same trajectory),
  interpolated the same way.  jnmf: ``Stopping(target=0.5 (err ||Y||)^2)`` (the
  objective's units), timed as one compiled call;
* **peak memory**: experiments/memory.py's cases (each its own process, minus a bare
  process), for jnmf and scikit-learn; RcppML's in R (VmHWM after resetting it once the
  dgCMatrix is built, minus R with Matrix and RcppML loaded);
* **32 restarts**: ``jnmf.fit(Y, 20, restarts=32, max_iterations=N)`` against a loop of
  32 scikit-learn cd fits of N iterations (``--restart-iterations``, 20 by default: 32
  full 200-iteration cd fits would take far longer than 10 minutes on 2 cores).

The errors are computed the same way for every method, in float64, from the factors
(``||Y||^2 - 2 <Y, LR> + <L'L, RR'>``; RcppML's ``w diag(d) h``).

    python experiments/bench_sparse.py                       # about 15-25 minutes on 2 cores
    python experiments/bench_sparse.py --small               # 10x smaller matrix, a quick check
    python experiments/bench_sparse.py --skip-r --skip-memory --skip-restarts
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)

from _bench_env import blas_report, clean_blas_env  # noqa: E402

RANK = 20

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
mtx <- args[1]; out <- args[2]; k <- as.integer(args[3]); seed <- as.integer(args[4])
threads <- as.integer(args[6])
maxits <- as.integer(strsplit(args[5], ",")[[1]])
suppressPackageStartupMessages({library(Matrix); library(RcppML)})
hwm <- function() {
  s <- readLines("/proc/self/status")
  as.numeric(strsplit(trimws(sub("VmHWM:", "", s[grepl("^VmHWM", s)])), " ")[[1]][1])
}
cat("5", file = "/proc/self/clear_refs")
bare_kb <- hwm()
A <- as(as(Matrix::readMM(mtx), "CsparseMatrix"), "dgCMatrix")
gc()
cat("5", file = "/proc/self/clear_refs")
start_kb <- hwm()
options(RcppML.threads = threads)
cat("RcppML", as.character(packageVersion("RcppML")), "\n")
res <- list()
for (it in maxits) {
  t <- system.time(m <- RcppML::nmf(A, k = k, tol = 1e-10, maxit = it, seed = seed, L1 = c(0, 0),
                                    diag = TRUE, mask_zeros = FALSE, verbose = FALSE))[["elapsed"]]
  get <- function(x, name) if (isS4(x)) slot(x, name) else x[[name]]
  w <- get(m, "w"); d <- get(m, "d"); h <- get(m, "h")
  f <- file.path(out, paste0("f", it, ".bin"))
  con <- file(f, "wb"); writeBin(as.double(c(dim(w), dim(h))), con); writeBin(as.double(w), con)
  writeBin(as.double(d), con); writeBin(as.double(h), con); close(con)
  res[[length(res) + 1]] <- sprintf('{"maxit": %d, "seconds": %.6f, "file": "%s"}', it, t, f)
}
peak_kb <- hwm()
cat("JSON", sprintf('{"runs": [%s], "bare_kb": %.0f, "start_kb": %.0f, "peak_kb": %.0f}',
                    paste(res, collapse = ", "), bare_kb, start_kb, peak_kb), "\n")
"""


def rel_error(Y, normY2: float, W, H) -> float:
    """||Y - W H||_F / ||Y||_F in float64 without an m x n array (W: m x k, H: k x n)."""
    import numpy as np

    W = np.asarray(W, np.float64)
    H = np.asarray(H, np.float64)
    cross = float(np.sum((Y @ H.T) * W))
    model = float(np.sum((W.T @ W) * (H @ H.T)))
    return float(np.sqrt(max(normY2 - 2 * cross + model, 0.0) / normY2))


def crossing_time(traj: list[tuple[int, float, float]], target: float):
    """(iterations, seconds) where a trajectory of (iterations, cumulative s, error) first
    reaches ``target``, linearly interpolated inside the step that crosses it."""
    prev = None
    for it, t, e in traj:
        if e <= target:
            if prev is None:
                return it, t
            it0, t0, e0 = prev
            frac = (e0 - target) / (e0 - e) if e0 > e else 1.0
            return it0 + frac * (it - it0), t0 + frac * (t - t0)
        prev = (it, t, e)
    return None, None


def sklearn_trajectory(Y, normY2, solver, total, chunk, seed=0):
    """Cumulative (iterations, seconds, error) of scikit-learn NMF, in chunks."""
    from sklearn.decomposition import non_negative_factorization

    traj = []
    W = H = None
    done, spent = 0, 0.0
    while done < total:
        step = min(chunk, total - done)
        kw = dict(n_components=RANK, solver=solver, max_iter=step, tol=0, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            if W is None:
                W, H, _ = non_negative_factorization(Y, init="random", **kw)
            else:
                W, H, _ = non_negative_factorization(Y, W=W, H=H, init="custom", **kw)
            spent += time.perf_counter() - t0
        done += step
        traj.append((done, spent, rel_error(Y, normY2, W, H)))
    return traj


def jnmf_call(Y, method, stopping, restarts=1):
    import jax

    import jnmf

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = jnmf.fit(Y, RANK, method=method, stopping=stopping, restarts=restarts, key=0)
    jax.block_until_ready(res.L)
    return time.perf_counter() - t0, res


def run_rcppml(Y, workdir, maxits, threads, seed=1):
    import numpy as np
    import scipy.io

    mtx = os.path.join(workdir, "Y.mtx")
    if not os.path.exists(mtx):
        t0 = time.perf_counter()
        scipy.io.mmwrite(mtx, Y)
        print(f"  wrote {mtx} in {time.perf_counter() - t0:.1f} s", flush=True)
    script = os.path.join(workdir, "rcppml.R")
    with open(script, "w") as f:
        f.write(R_SCRIPT)
    out = subprocess.run(
        ["Rscript", script, mtx, workdir, str(RANK), str(seed), ",".join(map(str, maxits)), str(threads)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    version = next((ln for ln in out.stdout.splitlines() if ln.startswith("RcppML")), "RcppML ?")
    info = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("JSON"))[4:])
    runs = []
    for r in info["runs"]:
        raw = np.fromfile(r["file"], np.float64)
        mw, kw, kh, nh = (int(v) for v in raw[:4])
        w = raw[4 : 4 + mw * kw].reshape(kw, mw).T  # R is column-major
        d = raw[4 + mw * kw : 4 + mw * kw + kw]
        h = raw[4 + mw * kw + kw :].reshape(nh, kh).T
        runs.append((r["maxit"], r["seconds"], w * d, h))
    return version.strip(), runs, info


def restarts_comparison(Y, normY2, R_, N):
    """jnmf.fit(restarts=R_) against a loop of R_ scikit-learn cd fits, N iterations each."""
    from sklearn.decomposition import NMF

    import jnmf

    print(f"\n{R_} restarts, {N} iterations each (load {os.getloadavg()[0]:.1f}) ...", flush=True)
    st = jnmf.Stopping(max_iterations=N, tol=0)
    t0 = time.perf_counter()
    jnmf_call(Y, "ahals", jnmf.Stopping(max_iterations=1, tol=0), restarts=R_)  # compile
    tc = time.perf_counter() - t0
    tj, rj = jnmf_call(Y, "ahals", st, restarts=R_)
    ej = rel_error(Y, normY2, rj.L, rj.R)
    t0 = time.perf_counter()
    errs = []
    for seed in range(R_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NMF(RANK, solver="cd", max_iter=N, tol=0, init="random", random_state=seed)
            W = model.fit_transform(Y)
        errs.append(rel_error(Y, normY2, W, model.components_))
    ts = time.perf_counter() - t0  # includes R_ error evaluations (small: O(nnz k))
    print(f"  jnmf ahals restarts={R_}: {tj:.1f} s (first call, compiling, {tc:.1f} s), best error {ej:.6f}")
    print(f"  scikit-learn cd, loop of {R_}: {ts:.1f} s, best error {min(errs):.6f}")
    print(f"  ratio jnmf / scikit-learn: {tj / ts:.2f}  (load now {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    clean_blas_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="10000 x 2000 (10x smaller), a quick check")
    p.add_argument("--methods", default="ahals,hals,mu", help="jnmf methods")
    p.add_argument("--iterations", type=int, default=50, help="N of jnmf's per-iteration timing")
    p.add_argument("--cd-iterations", type=int, default=200, help="scikit-learn cd iterations")
    p.add_argument("--mu-iterations", type=int, default=400, help="scikit-learn mu iterations (cap)")
    p.add_argument("--jnmf-cap", type=int, default=2000, help="jnmf's iteration cap when chasing the target")
    p.add_argument("--chunk", type=int, default=10, help="scikit-learn trajectory chunk")
    p.add_argument("--rcppml-maxit", default="1,2,3,5,8,12,20", help="RcppML maxit values")
    p.add_argument(
        "--r-threads",
        type=int,
        default=1,
        help="RcppML threads (0: all; on this loaded 2-core machine 1 was fastest: 10 iterations of "
        "the --small case took 3.3 s with 1 thread, 9.3 s with 2, 11.5 s with all)",
    )
    p.add_argument("--target-slack", type=float, default=0.001, help="target = cd's error (1 + this)")
    p.add_argument("--restarts", type=int, default=32)
    p.add_argument("--restart-iterations", type=int, default=20)
    p.add_argument("--skip-r", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-restarts", action="store_true")
    p.add_argument("--only-restarts", action="store_true", help="only the restarts comparison")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "jnmf_bench_sparse"))
    a = p.parse_args()

    import numpy as np
    import scipy.sparse as sp

    import jnmf

    m, n, density = (10000, 2000, 0.002) if a.small else (100000, 20000, 0.002)
    a.workdir += "_small" if a.small else ""
    os.makedirs(a.workdir, exist_ok=True)
    print(blas_report())
    Y = sp.random(
        m, n, density=density, format="csr", dtype=np.float32, random_state=np.random.default_rng(0)
    )
    normY2 = float(np.sum(Y.data.astype(np.float64) ** 2))
    print(
        f"Y: {m} x {n} CSR float32, {Y.nnz} stored ({density:.1%}), rank {RANK}; load {os.getloadavg()}",
        flush=True,
    )

    if a.only_restarts:
        restarts_comparison(Y, normY2, a.restarts, a.restart_iterations)
        return
    # ---------------------------------------------------------------- scikit-learn cd, mu
    print("scikit-learn trajectories ...", flush=True)
    load = {}
    load["sk-cd"] = os.getloadavg()[0]
    sk = {"sk-cd": sklearn_trajectory(Y, normY2, "cd", a.cd_iterations, a.chunk)}
    load["sk-mu"] = os.getloadavg()[0]
    sk["sk-mu"] = sklearn_trajectory(Y, normY2, "mu", a.mu_iterations, a.chunk)
    for name, traj in sk.items():
        print(f"  {name}: {traj[-1][0]} it in {traj[-1][1]:.1f} s, error {traj[-1][2]:.6f}", flush=True)

    # ---------------------------------------------------------------- RcppML
    rc = None
    if not a.skip_r:
        print("RcppML ...", flush=True)
        load["rcppml"] = os.getloadavg()[0]
        maxits = [int(v) for v in a.rcppml_maxit.split(",")]
        version, runs, rinfo = run_rcppml(Y, a.workdir, maxits, a.r_threads)
        rc = [(it, s, rel_error(Y, normY2, w, h)) for it, s, w, h in runs]
        steps = ", ".join(f"{it} it {s:.2f} s err {e:.6f}" for it, s, e in rc)
        print(f"  {version}, {a.r_threads} thread(s): {steps}", flush=True)

    # ---------------------------------------------------------------- target
    target = sk["sk-cd"][-1][2] * (1 + a.target_slack)
    best = {name: min(e for _, _, e in traj) for name, traj in sk.items()}
    if rc:
        best["rcppml"] = min(e for _, _, e in rc)
    note = f"scikit-learn cd's error after {a.cd_iterations} iterations + {a.target_slack:.2%}"
    if max(best.values()) > target:
        worst = max(best, key=best.get)
        target = best[worst] * 1.0000001
        note = f"{worst}'s best error (the other target, cd+0.1%, it does not reach)"
    print(f"target relative error {target:.6f}: {note}", flush=True)
    target_obj = 0.5 * target**2 * normY2

    # ---------------------------------------------------------------- jnmf
    rows = []
    for name, traj in sk.items():
        it, t = crossing_time(traj, target)
        rows.append(dict(name=name, s_it=traj[-1][1] / traj[-1][0], marg=None, it=it, t=t, load=load[name]))
    if rc:
        (i0, t0, _), (i1, t1, _) = rc[0], rc[-1]
        rc_sorted = []
        for it, s, e in rc:  # cumulative time of one run reaching `it`: its own run time
            rc_sorted.append((it, s, e))
        it, t = crossing_time(rc_sorted, target)
        rows.append(
            dict(name="rcppml", s_it=t1 / i1, marg=(t1 - t0) / (i1 - i0), it=it, t=t, load=load["rcppml"])
        )
    for method in a.methods.split(","):
        lo = os.getloadavg()[0]
        print(f"jnmf {method} ...", flush=True)
        jnmf_call(Y, method, jnmf.Stopping(max_iterations=1, tol=0))  # compile
        t1, _ = jnmf_call(Y, method, jnmf.Stopping(max_iterations=1, tol=0))
        tN, resN = jnmf_call(Y, method, jnmf.Stopping(max_iterations=a.iterations, tol=0))
        tt, rest = jnmf_call(Y, method, jnmf.Stopping(max_iterations=a.jnmf_cap, tol=0, target=target_obj))
        err = rel_error(Y, normY2, rest.L, rest.R)
        errN = rel_error(Y, normY2, resN.L, resN.R)
        its = int(rest.iterations)
        reached = err <= target * (1 + 1e-6)
        print(
            f"  t(1) {t1:.2f} s, t({a.iterations}) {tN:.2f} s (error {errN:.6f}); to target: "
            f"{its} it, {tt:.2f} s, error {err:.6f} ({'reached' if reached else 'NOT reached'})",
            flush=True,
        )
        rows.append(
            dict(
                name=f"jnmf-{method}",
                s_it=tN / a.iterations,
                marg=(tN - t1) / (a.iterations - 1),
                it=its if reached else None,
                t=tt if reached else None,
                load=lo,
            )
        )

    print()
    print(f"Time per iteration and to relative error {target:.6f} ({note})")
    print(f"{'method':12s} {'s/it':>8s} {'marg s/it':>9s} {'it to tgt':>9s} {'s to tgt':>9s} {'load':>5s}")
    for r in rows:
        marg = f"{r['marg']:.4f}" if r["marg"] is not None else "-"
        it = f"{r['it']:.1f}" if r["it"] is not None else "-"
        t = f"{r['t']:.2f}" if r["t"] is not None else "-"
        print(f"{r['name']:12s} {r['s_it']:8.4f} {marg:>9s} {it:>9s} {t:>9s} {r['load']:5.1f}")
    by = {r["name"]: r for r in rows}
    print()
    for r in rows:
        if not r["name"].startswith("jnmf"):
            continue
        for peer, goal in (("sk-cd", 0.5), ("sk-mu", None), ("rcppml", 1.0)):
            if peer not in by or r["t"] is None or by[peer]["t"] is None:
                continue
            ratio = r["t"] / by[peer]["t"]
            verdict = ""
            if goal is not None:
                verdict = f" goal <= {goal:.1f}: {'met' if ratio <= goal else 'MISSED'}"
            print(
                f"time to error {r['name']} / {peer}: {ratio:.2f}   "
                f"(per iteration {r['s_it'] / by[peer]['s_it']:.2f}){verdict}"
            )

    # ---------------------------------------------------------------- memory
    if not a.skip_memory:
        import memory

        print("\nPeak memory (each its own process; peak - bare process, x the CSR's bytes):", flush=True)
        extra = ["--small"] if a.small else []
        bare = {lib: memory.spawn(["--case", f"bare-{lib}", *extra]) for lib in ("jnmf", "sklearn")}
        mem = {}
        for case in ["sparse-" + m_ for m_ in a.methods.split(",")] + ["sk-sparse-cd", "sk-sparse-mu"]:
            r = memory.spawn(["--case", case, *extra])
            if "error" in r:
                print(f"  {case}: FAILED {r['error']}")
                continue
            lib = memory.CASES[case][0]
            mem[case] = (r["hwm_kb"] - bare[lib]["hwm_kb"]) * 1024
            mib = mem[case] / 2**20
            print(f"  {case:16s} {mib:8.0f} MiB = {mem[case] / r['y_bytes']:.2f} x CSR", flush=True)
        csr_bytes = Y.data.nbytes + Y.indices.nbytes + Y.indptr.nbytes
        if rc:
            r_extra = (rinfo["peak_kb"] - rinfo["bare_kb"]) * 1024
            print(
                f"  {'rcppml':16s} {r_extra / 2**20:8.0f} MiB = {r_extra / csr_bytes:.2f} x CSR "
                f"(dgCMatrix: int32 + float64; peak - R with Matrix and RcppML loaded)"
            )
        if "sk-sparse-cd" in mem:
            for case, v in mem.items():
                if case.startswith("sparse"):
                    ok = "met" if v <= mem["sk-sparse-cd"] else "MISSED"
                    print(f"  memory {case} / sk-sparse-cd: {v / mem['sk-sparse-cd']:.2f} (goal <= 1: {ok})")

    if not a.skip_restarts:
        restarts_comparison(Y, normY2, a.restarts, a.restart_iterations)


if __name__ == "__main__":
    main()
