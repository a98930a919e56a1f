"""jnmf.MiniBatchNMF vs scikit-learn's MiniBatchNMF, side by side in one run.

Both fit the same dense data with the same settings (``init="nndsvda"``, the default for
``k <= min(m, n)``; ``batch_size``, ``max_iter``, ``tol=0`` so both run every step), warm
(jnmf's programs compiled by a first fit), and the script prints each fit's time, its
start's time (the NNDSVD) and the ratio.  The start was 90% of jnmf's fit at 1000 x 500
while ``jnmf.init`` took the full SVD of dense data; it now takes the randomized range
finder above a small size (``jnmf.init._exact_svd_pays``), as scikit-learn always does.

Run:  python experiments/bench_minibatch.py [--shape 1000 500] [--rank 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

from _bench_env import best_time, blas_report, clean_blas_env

clean_blas_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(1000, 500))
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from sklearn.decomposition import MiniBatchNMF as SkMiniBatchNMF
    from sklearn.decomposition._nmf import _initialize_nmf

    import jnmf
    from jnmf.data import dense_operator
    from jnmf.init import nndsvda

    m, n = args.shape
    k = args.rank
    rng = np.random.default_rng(0)
    X = (rng.random((m, k)) @ rng.random((k, n)) + 0.1 * rng.random((m, n))).astype(np.float32)
    print(f"jax {jax.__version__}, numpy BLAS: {blas_report()}")
    print(f"data {m} x {n} float32, rank {k}, batch {args.batch_size}, max_iter {args.max_iter}, tol 0")
    print(f"load average at start: {os.getloadavg()}")
    settings = dict(
        init="nndsvda", batch_size=args.batch_size, max_iter=args.max_iter, tol=0.0, random_state=0
    )

    def jn():
        return jnmf.MiniBatchNMF(k, **settings).fit(X)

    def sk():
        return SkMiniBatchNMF(k, **settings).fit(X)

    op = dense_operator(X)

    def jn_start():
        return jax.block_until_ready(nndsvda(op, k))

    def sk_start():
        return _initialize_nmf(X, k, init="nndsvda", random_state=0)

    jn(), jn_start()  # compile
    t_jn, t_sk = best_time(jn, args.repeats), best_time(sk, args.repeats)
    c_jn, c_sk = (best_time(f, args.repeats, clock=time.process_time) for f in (jn, sk))
    s_jn, s_sk = best_time(jn_start, args.repeats), best_time(sk_start, args.repeats)
    e_jn = jnmf.MiniBatchNMF(k, **settings).fit(X).reconstruction_err_
    e_sk = SkMiniBatchNMF(k, **settings).fit(X).reconstruction_err_
    print(f"{'':<22} {'fit s':>8} {'fit cpu s':>10} {'start s':>8} {'error':>10}")
    print(f"{'jnmf.MiniBatchNMF':<22} {t_jn:>8.3f} {c_jn:>10.3f} {s_jn:>8.3f} {e_jn:>10.4f}")
    print(f"{'sklearn MiniBatchNMF':<22} {t_sk:>8.3f} {c_sk:>10.3f} {s_sk:>8.3f} {e_sk:>10.4f}")
    print(f"jnmf / scikit-learn fit time: {t_jn / t_sk:.2f}x, cpu time: {c_jn / c_sk:.2f}x")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
