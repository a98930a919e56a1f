"""Peak resident memory of jnmf.fit and scikit-learn's NMF, as a multiple of Y's bytes (issue 12).

Each case runs in its own Python process (``python memory.py --case NAME`` prints one JSON
line); the parent runs every case, then prints a table.  In a case process:

1. the libraries are imported and initialized (jnmf: ``import jax, jnmf`` and the CPU
   backend started; scikit-learn: ``import sklearn.decomposition``);
2. Y is created in the process (the caller's own copy counts);
3. the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``), so that
   temporaries of *creating* Y (e.g. scipy.sparse.random's int64 COO) do not count, while
   Y itself, still resident, does;
4. the fit runs; VmHWM (peak resident set) is read from ``/proc/self/status``;
5. the same fit runs again after another reset: its increment over the resident set just
   before it, plus Y, is the "2nd call" multiple (compiled, so without the compiler's
   memory, which the first call's number includes).

The reported multiple is ``(VmHWM - bare) / bytes(Y)``, where ``bare`` is the VmHWM of a
process that did step 1 only (one bare process per library, also reset before reading)
and ``bytes(Y)`` is ``m n 4`` for dense float32 Y and ``data + indices + indptr`` of the
CSR for sparse Y.  A multiple of 1 is the caller's Y and nothing else: the zero-copy
limit.  The goal of issue 12 is <= 2 (dense: Y plus one device copy) and <= 3 (sparse).
jnmf's compilation (one compile per case: each process is fresh) is included.

    python experiments/memory.py                 # every case (about 10 minutes on 2 cores)
    python experiments/memory.py --cases dense-ahals,sk-dense-cd
    python experiments/memory.py --small         # 10x smaller matrices, a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)

from _bench_env import blas_report, clean_blas_env  # noqa: E402

DENSE = (20000, 5000)
SPARSE = (100000, 20000, 0.002)
RANK = 20
ITERATIONS = 20

# name: (library, data kind, description)
CASES = {
    "dense-ahals": ("jnmf", "dense", "jnmf.fit ahals, 20 it"),
    "dense-mu": ("jnmf", "dense", "jnmf.fit mu, 20 it"),
    "dense-mu-r8": ("jnmf", "dense", "jnmf.fit mu, restarts=8, 20 it"),
    "dense-ahals-aligned": ("jnmf", "aligned", "jnmf.fit ahals, 20 it, Y from aligned_empty"),
    "dense-mu-r8-aligned": ("jnmf", "aligned", "jnmf.fit mu, restarts=8, 20 it, aligned Y"),
    "sk-dense-cd": ("sklearn", "dense", "sklearn NMF cd, 20 it"),
    "sparse-ahals": ("jnmf", "sparse", "jnmf.fit ahals, 20 it"),
    "sparse-hals": ("jnmf", "sparse", "jnmf.fit hals, 20 it"),
    "sparse-mu": ("jnmf", "sparse", "jnmf.fit mu, 20 it"),
    "sparse-kl": ("jnmf", "sparse", "jnmf.fit kl, 20 it"),
    "sk-sparse-cd": ("sklearn", "sparse", "sklearn NMF cd, 20 it"),
    "sk-sparse-mu": ("sklearn", "sparse", "sklearn NMF mu, 20 it"),
}


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def import_library(lib: str) -> None:
    if lib == "jnmf":
        import jax
        import jax.numpy as jnp

        import jnmf  # noqa: F401

        jax.devices()
        jnp.zeros(1).block_until_ready()  # the CPU client and its thread pools exist
    else:
        import sklearn.decomposition  # noqa: F401


def make_data(kind: str, small: bool):
    import numpy as np

    if kind == "sparse":
        import scipy.sparse as sp

        m, n, d = SPARSE
        if small:
            m, n = m // 10, n // 10
        Y = sp.random(m, n, density=d, format="csr", dtype=np.float32, random_state=np.random.default_rng(0))
        nbytes = Y.data.nbytes + Y.indices.nbytes + Y.indptr.nbytes
        return Y, nbytes
    m, n = DENSE
    if small:
        m, n = m // 10, n // 10
    if kind == "aligned":
        from jnmf.data import aligned_empty

        Y = aligned_empty((m, n), np.float32)
    else:
        Y = np.empty((m, n), np.float32)
    np.random.default_rng(0).random(out=Y, dtype=np.float32)
    return Y, Y.nbytes


def run_case(name: str, small: bool) -> dict:
    import gc

    if name.startswith("bare-"):
        import_library(name[5:])
        gc.collect()
        reset_peak()
        return {"case": name, "hwm_kb": status_kb("VmHWM"), "rss_kb": status_kb("VmRSS")}
    lib, kind, _ = CASES[name]
    import_library(lib)
    Y, nbytes = make_data(kind, small)
    gc.collect()
    reset_peak()
    start_kb = status_kb("VmRSS")
    method = name.split("-")[-1] if lib == "sklearn" else name.split("-")[1]

    def once():
        if lib == "jnmf":
            import jnmf

            restarts = 8 if "-r8" in name else 1
            res = jnmf.fit(Y, RANK, method=method, max_iterations=ITERATIONS, tol=0, restarts=restarts)
            return float(res.objective)
        import warnings

        from sklearn.decomposition import NMF

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NMF(RANK, solver=method, max_iter=ITERATIONS, tol=0, init="random", random_state=0)
            model.fit_transform(Y)
        return 0.5 * float(model.reconstruction_err_) ** 2

    t0 = time.perf_counter()
    objective = once()
    seconds = time.perf_counter() - t0
    cold_kb = status_kb("VmHWM")
    # the same call again (compiled; jnmf's device copy and temporaries allocated anew)
    gc.collect()
    reset_peak()
    before_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    once()
    warm_seconds = time.perf_counter() - t0
    aligned = bool(Y.ctypes.data % 64 == 0) if kind != "sparse" else None
    return {
        "case": name,
        "hwm_kb": cold_kb,
        "warm_increment_kb": status_kb("VmHWM") - before_kb,
        "warm_seconds": warm_seconds,
        "start_kb": start_kb,
        "y_bytes": int(nbytes),
        "seconds": seconds,
        "objective": objective,
        "aligned": aligned,
        "shape": list(Y.shape),
    }


def spawn(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    clean_blas_env()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help="run one case in this process and print its JSON line")
    p.add_argument("--cases", help="comma-separated subset of the cases (default: all)")
    p.add_argument("--small", action="store_true", help="10x smaller matrices")
    a = p.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.small)), flush=True)
        return
    names = a.cases.split(",") if a.cases else list(CASES)
    extra = ["--small"] if a.small else []
    print(blas_report())
    print(f"load average before: {os.getloadavg()}", flush=True)
    bare = {lib: spawn(["--case", f"bare-{lib}", *extra]) for lib in ("jnmf", "sklearn")}
    for lib, b in bare.items():
        print(f"bare {lib} process: VmHWM {b['hwm_kb'] / 1024:.0f} MiB")
    rows = []
    for name in names:
        load = os.getloadavg()[0]
        r = spawn(["--case", name, *extra])
        r["load"] = load
        lib, kind, desc = CASES[name]
        if "error" in r:
            print(f"{name}: FAILED {r['error']}", flush=True)
            continue
        r["multiple"] = (r["hwm_kb"] - bare[lib]["hwm_kb"]) * 1024 / r["y_bytes"]
        r["warm_multiple"] = 1 + r["warm_increment_kb"] * 1024 / r["y_bytes"]
        r["desc"] = desc
        r["kind"] = kind
        rows.append(r)
        print(
            f"{name:22s} {r['multiple']:6.2f} x Y (2nd call {r['warm_multiple']:6.2f} x Y)  "
            f"{r['seconds']:.1f} s / {r['warm_seconds']:.1f} s, load {load:.1f}, aligned {r['aligned']}",
            flush=True,
        )
    print()
    print("peak resident memory minus the bare process, as a multiple of Y's bytes")
    print("1st call: compilation included (the goal's measure); 2nd: the same fit again in the same")
    print("process, Y plus what its peak added to the resident set before it (compiled: no compiler memory)")
    hdr = f"{'case':22s} {'what':44s} {'Y MiB':>7s} {'1st MiB':>8s} {'1st xY':>7s} {'2nd xY':>7s}"
    hdr += f" {'goal':>5s}"
    print(hdr + f" {'s 1st/2nd':>11s} {'load':>5s}")
    for r in rows:
        goal = 3.0 if r["kind"] == "sparse" else 2.0
        ok = ("met" if r["multiple"] <= goal else "MISS") if r["case"].startswith(("dense", "sparse")) else ""
        extra_mib = r["multiple"] * r["y_bytes"] / 2**20
        print(
            f"{r['case']:22s} {r['desc']:44s} {r['y_bytes'] / 2**20:7.1f} {extra_mib:8.0f} "
            f"{r['multiple']:7.2f} {r['warm_multiple']:7.2f} {ok:>5s} "
            f"{r['seconds']:5.1f}/{r['warm_seconds']:<5.1f} {r['load']:5.1f}"
        )
    pairs = [
        ("dense-ahals", "sk-dense-cd"),
        ("sparse-ahals", "sk-sparse-cd"),
        ("sparse-hals", "sk-sparse-cd"),
        ("sparse-mu", "sk-sparse-mu"),
    ]
    by = {r["case"]: r for r in rows}
    for j, s in pairs:
        if j in by and s in by:
            print(
                f"ratio {j} / {s}: {by[j]['multiple'] / by[s]['multiple']:.2f} "
                f"(2nd calls: {by[j]['warm_multiple'] / by[s]['warm_multiple']:.2f})"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
