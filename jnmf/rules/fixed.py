"""One factor fixed: exact non-negative least squares for the other (host side).

With the spectra ``H`` (``k x n``) fixed, ``min_{W >= 0} ||X - W H||_F`` splits into one
non-negative least-squares problem per row ``x`` of X.  Its normal equations involve H
only through the ``k x k`` Gram matrix ``Q = H H'``: with the Cholesky factor ``Q = A'A``
and ``A' b = H x``, ``||x - H'w||^2 = ||A w - b||^2 + const``, so each row is a ``k x k``
NNLS problem, solved exactly by Lawson & Hanson's active-set method (1974;
``scipy.optimize.nnls``).  This is the usage refit of consensus NMF (Kotliar et al.
2019) and, transposed, its spectra refit.

It runs on the host in float64 and compiles nothing: for the few thousand rows of a
refit it takes ~0.1 s, where the batched pivoting of :mod:`jnmf.nnls` costs seconds of
compilation per shape.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nnls_fixed"]

# relative ridge on Q = H H' so its Cholesky factor exists when H has a zero or
# repeated row (the solution is then that of the barely regularized problem)
_RIDGE = 1e-12


def nnls_fixed(X, H) -> np.ndarray:
    """``argmin_{W >= 0} ||X - W H||_F`` for a fixed ``H`` (exact NNLS per row of X).

    Args:
        X: ``p x n`` data (NumPy or scipy.sparse).
        H: ``k x n`` fixed factor.

    Returns:
        ``W``, ``p x k`` float64, non-negative.

    Raises:
        ValueError: X and H have different numbers of columns.
    """
    import scipy.sparse as sp  # imported on use: a plain fit does not need scipy
    from scipy.linalg import cholesky, solve_triangular
    from scipy.optimize import nnls

    if not sp.issparse(X):
        X = np.asarray(X, np.float64)
    H = np.asarray(H, np.float64)
    if len(X.shape) != 2 or H.ndim != 2 or X.shape[1] != H.shape[1]:
        raise ValueError(f"X (p x n) and H (k x n) must share n; got shapes {X.shape} and {H.shape}")
    k = H.shape[0]
    Q = H @ H.T
    Q[np.diag_indices(k)] += _RIDGE * max(float(np.trace(Q)) / k, np.finfo(np.float64).tiny)
    A = cholesky(Q, lower=False)  # Q = A' A
    XH = np.asarray(X @ H.T, np.float64)  # p x k (a sparse X times a dense H is dense)
    B = solve_triangular(A, XH.T, trans="T")  # A' b = H x, one column per row of X
    W = np.empty((X.shape[0], k))
    for i in range(X.shape[0]):
        W[i] = nnls(A, B[:, i])[0]
    return W
