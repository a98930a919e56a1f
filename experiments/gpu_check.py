"""The Python pieces of experiments/gpu_check.sh (issue 13): device facts, memory
bandwidth, one iteration's throughput as a fraction of it, and the one JSON report.

``python experiments/gpu_check.py throughput [--cpu-dry-run]`` prints one JSON line:

* ``devices``: JAX's backend and devices;
* ``copy_bandwidth``: the bytes per second of a device-to-device copy of a large array
  (``x + 1`` on float32: one read and one write of every byte; the median of 5 warm
  runs), the achievable streaming bandwidth;
* ``nominal_bandwidth``: the peak HBM bandwidth of the GPU's spec sheet when its name is
  in :data:`NOMINAL_TB_PER_S` (else null);
* ``iterations``: for dense ``mu``, dense ``hals`` and sparse ``mu`` fits, the time of
  one warm iteration (``(t(3 + I) - t(3)) / I``, median of 3), the bytes an iteration
  must move at the least (Y read twice: by ``L'Y`` and by ``R Y'``; sparse Y as 12-byte
  COO entries; factors not counted), and those bytes per second as a fraction of the
  copy and the nominal bandwidth.  NMF with k = 20 is memory-bound on Y (a few flops
  per byte), so this fraction is its efficiency.

``python experiments/gpu_check.py assemble DIR OUT`` gathers the pieces the shell script
left in ``DIR`` (``*.json`` pieces, ``*.out`` logs with ``*.rc`` / ``*.seconds``) into
the single JSON file ``OUT``.

``--cpu-dry-run`` runs the same code on CPU with small shapes (to catch errors where no
GPU is lent); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(HERE))

# Peak memory bandwidth from the vendors' spec sheets, TB/s (substring of the device name).
NOMINAL_TB_PER_S = {
    "H200": 4.8,
    "H100 NVL": 3.9,
    "H100 PCIe": 2.0,
    "H100": 3.35,  # SXM5
    "A100-SXM4-80GB": 2.039,
    "A100 80GB PCIe": 1.935,
    "A100": 1.555,  # 40 GB
    "L40S": 0.864,
    "L4": 0.3,
    "A10G": 0.6,
    "V100": 0.9,
    "T4": 0.32,
}
RANK = 20
WARM = 3


def nominal_bandwidth(name: str) -> float | None:
    """Bytes per second of the spec-sheet peak for a device named ``name`` (None when unknown)."""
    for key, tb in NOMINAL_TB_PER_S.items():  # ordered: specific names first
        if key in name:
            return tb * 1e12
    return None


def copy_bandwidth(gib: float) -> float:
    """Bytes per second of ``x + 1`` over a float32 array of ``gib`` GiB (read + write), median of 5."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    add = jax.jit(lambda x: x + 1.0)
    jax.block_until_ready(add(x))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(add(x))
        times.append(time.perf_counter() - t)
    return 2 * x.size * 4 / statistics.median(times)


def iteration_seconds(method: str, data, rows: int, cols: int, iterations: int) -> float:
    """Seconds of one warm iteration of ``method`` on the operator ``data`` (median of 3)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jnmf.driver import iterate
    from jnmf.problem import build_problem
    from jnmf.rules import make_rule

    rng = np.random.default_rng(0)
    problem = build_problem(data, RANK)
    rule = make_rule(method)
    L0 = jnp.asarray(rng.random((rows, RANK), dtype=np.float32) + 0.1)
    R0 = jnp.asarray(rng.random((RANK, cols), dtype=np.float32) + 0.1)
    state = rule.init(problem, L0, R0)
    run = eqx.filter_jit(
        lambda problem, state, T: iterate(rule, problem, state, max_iterations=T, tol=0.0, history_size=8)
    )
    short, long = jnp.asarray(WARM, jnp.int32), jnp.asarray(WARM + iterations, jnp.int32)
    jax.block_until_ready(run(problem, state, long))

    def seconds(T):
        t = time.perf_counter()
        jax.block_until_ready(run(problem, state, T))
        return time.perf_counter() - t

    return statistics.median((seconds(long) - seconds(short)) / iterations for _ in range(3))


def throughput(args) -> dict:
    import jax
    import numpy as np
    import scipy.sparse as sp

    from jnmf.data import DenseData, sparse_operator

    devices = jax.devices()
    name = devices[0].device_kind
    dry = args.cpu_dry_run
    m, n = (2048, 512) if dry else (65536, 8192)  # dense: 2 GiB of float32 on a GPU
    ms, ns, density = (20000, 2000, 0.001) if dry else (500_000, 50_000, 0.001)  # 2.5e7 entries
    iterations = 4 if dry else 20
    copy = copy_bandwidth(0.0625 if dry else 4.0)
    nominal = nominal_bandwidth(name)
    rng = np.random.default_rng(0)
    Y = jax.device_put(rng.random((m, n), dtype=np.float32))
    Ysp = sp.random(ms, ns, density=density, format="csr", dtype=np.float32, random_state=rng)
    cases = {
        "dense mu": ("mu", DenseData(Y), (m, n), 2 * m * n * 4),
        "dense hals": ("hals", DenseData(Y), (m, n), 2 * m * n * 4),
        "sparse mu": ("mu", sparse_operator("Y", Ysp), (ms, ns), 2 * Ysp.nnz * 12),
    }
    out = {
        "dry_run": dry,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": name,
        "copy_bandwidth_GBps": copy / 1e9,
        "nominal_bandwidth_GBps": None if nominal is None else nominal / 1e9,
        "iterations": {},
    }
    for case, (method, data, (rows, cols), least_bytes) in cases.items():
        s = iteration_seconds(method, data, rows, cols, iterations)
        rate = least_bytes / s
        out["iterations"][case] = {
            "shape": [rows, cols],
            "rank": RANK,
            "ms_per_iteration": 1e3 * s,
            "least_bytes_per_iteration": least_bytes,
            "GBps": rate / 1e9,
            "fraction_of_copy_bandwidth": rate / copy,
            "fraction_of_nominal_bandwidth": None if nominal is None else rate / nominal,
        }
    return out


def _pytest_counts(text: str) -> dict:
    """Counts from pytest's last summary line ("3 failed, 120 passed, 2 skipped in 61.2s")."""
    counts = {}
    lines = [x for x in text.splitlines() if re.search(r"\b(passed|failed|error|errors)\b", x)]
    for number, word in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1] if lines else ""
    ):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return counts


def assemble(directory: str, path: str) -> dict:
    """The single report from the pieces in ``directory``, written to ``path``."""
    report: dict = {}
    for piece in sorted(glob.glob(os.path.join(directory, "*.json"))):
        key = os.path.splitext(os.path.basename(piece))[0]
        try:
            with open(piece) as fh:
                report[key] = json.load(fh)
        except (OSError, ValueError) as err:
            report[key] = {"error": f"unreadable piece: {err}"}
    for log in sorted(glob.glob(os.path.join(directory, "*.out"))):
        key = os.path.splitext(os.path.basename(log))[0]
        with open(log, errors="replace") as fh:
            text = fh.read()
        step = {"output_tail": text[-6000:]}
        for suffix in ("rc", "seconds"):
            try:
                with open(os.path.join(directory, f"{key}.{suffix}")) as fh:
                    step[suffix] = float(fh.read().strip())
            except (OSError, ValueError):
                step[suffix] = None
        if key == "tests":
            step["counts"] = _pytest_counts(text)
        report[key] = step
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--cpu-dry-run", action="store_true", help="small shapes on CPU: catch errors only")
    a = sub.add_parser("assemble")
    a.add_argument("directory")
    a.add_argument("out")
    args = ap.parse_args()
    if args.command == "throughput":
        print(json.dumps(throughput(args)))
    else:
        report = assemble(args.directory, args.out)
        print(f"wrote {args.out}: {', '.join(report)}")


if __name__ == "__main__":
    main()
