"""Streaming a ~4 GB float32 ``.npy`` with ``jnmf.fit_stream`` in under 1 GB of memory.

Writes a 1,000,000 x 1,000 float32 matrix (planted rank 10 plus 10% uniform noise) to
/tmp block by block, then, each in its own process (so peak resident memory is the
step's own, read from /proc/self/status VmHWM):

* ``stream``: ``fit_stream(path, 10, block_rows=...)``, read through
  ``np.load(mmap_mode="r")`` block by block (each block copied, the mapped pages
  released with madvise), ``return_L=True`` (L is 1e6 x 10 floats, 40 MB);
* ``sample``: a full in-memory ``jnmf.fit`` on a 10% row sample (every 10th row).

It reports time, peak memory, the streamed fit's relative error over all of Y, and both
fits' relative errors on the sample rows (the streamed fit's L rows there, with its R).
The file is deleted at the end.  Usage: ``python experiments/stream_big.py [rows]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

PATH = "/tmp/jnmf_stream_big.npy"
N, K, NOISE, BLOCK, WRITE_BLOCK = 1000, 10, 0.1, 20000, 50000


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write(rows: int) -> None:
    rng = np.random.default_rng(0)
    R = rng.random((K, N)).astype(np.float32)
    with open(PATH, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, N)})
        for start in range(0, rows, WRITE_BLOCK):
            b = min(WRITE_BLOCK, rows - start)
            L = rng.random((b, K)).astype(np.float32)
            Y = L @ R
            Y += NOISE * float(Y.mean()) * rng.random(Y.shape, dtype=np.float32)
            f.write(np.ascontiguousarray(Y, np.float32).tobytes())


def stream(epochs: int) -> dict:
    import jnmf

    t = time.perf_counter()
    res = jnmf.fit_stream(
        PATH, K, block_rows=BLOCK, epochs=epochs, tol=1e-4, key=0, progress=False, warn=False
    )
    elapsed = time.perf_counter() - t
    # ||Y||^2 block by block, for the relative error of the whole stream
    norm2 = sum(
        float(np.sum(np.square(b, dtype=np.float64))) for b in jnmf.streaming.iter_npy_blocks(PATH, BLOCK)
    )
    np.save("/tmp/jnmf_stream_big_R.npy", np.asarray(res.R))
    np.save("/tmp/jnmf_stream_big_Ls.npy", res.L[::10])
    return dict(
        step="stream",
        seconds=elapsed,
        passes=int(res.iterations),
        status=res.status_name,
        rel_err=float(np.sqrt(2 * res.objective / norm2)),
        history=[float(h) for h in res.history],
        peak_rss_mb=peak_rss_mb(),
    )


def sample() -> dict:
    import jnmf

    mm = np.load(PATH, mmap_mode="r")
    Ys = np.array(mm[::10])
    del mm
    t = time.perf_counter()
    full = jnmf.fit(Ys, K, key=0)
    elapsed = time.perf_counter() - t
    R = np.load("/tmp/jnmf_stream_big_R.npy")
    Ls = np.load("/tmp/jnmf_stream_big_Ls.npy")
    nrm = np.linalg.norm(Ys)
    return dict(
        step="sample",
        seconds=elapsed,
        status=full.status_name,
        iterations=int(full.iterations),
        full_fit_rel_err_sample=float(np.linalg.norm(Ys - np.asarray(full.L) @ np.asarray(full.R)) / nrm),
        stream_rel_err_sample=float(np.linalg.norm(Ys - Ls @ R) / nrm),
        peak_rss_mb=peak_rss_mb(),
    )


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    try:
        t = time.perf_counter()
        write(rows)
        print(
            json.dumps(
                dict(step="write", rows=rows, gb=os.path.getsize(PATH) / 1e9, seconds=time.perf_counter() - t)
            )
        )
        for step in ("stream", "sample"):
            out = subprocess.run(
                [sys.executable, __file__, "--step", step, str(epochs)],
                capture_output=True,
                text=True,
                check=True,
            )
            print(out.stdout.strip().splitlines()[-1], flush=True)
    finally:
        for p in (PATH, "/tmp/jnmf_stream_big_R.npy", "/tmp/jnmf_stream_big_Ls.npy"):
            if os.path.exists(p):
                os.remove(p)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
        print(json.dumps(stream(epochs) if sys.argv[2] == "stream" else sample()))
    else:
        main()
