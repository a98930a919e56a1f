"""Batched exact solver for many small non-negative quadratic programs (ANLS's inner problem).

For each row ``c_i`` of C (``p x k``) it solves

    min_{x >= 0}  1/2 x' Q_i x + c_i' x                                  (NNQP)

with ``Q_i`` symmetric positive semidefinite ``k x k``, either shared (``Q``, the common
case: one Gram matrix for all rows) or one per row (``p x k x k``).  The half step of
eq. 3 (Pav 2024, eqs. 6-9) decouples into such problems whenever its row weights are
diagonal; see :mod:`jnmf.rules.anls`.

Method: block principal pivoting (Kim & Park 2011, "Fast nonnegative matrix
factorization: an active-set-like method and comparisons", Algorithm 2 with the
backup rule).  x solves NNQP iff ``x >= 0``, ``y = Q x + c >= 0`` and ``x' y = 0``.  For a
guess of the passive set F (its complement G is held at zero),

    x_F = -Q_FF^{-1} c_F,  x_G = 0,  y_F = 0,  y_G = Q_GF x_F + c_G,

and the infeasible variables are ``V = {i in F: x_i < 0} u {i in G: y_i < 0}``.  All of V
swap sides while |V| keeps decreasing (with up to three "free" tries when it does
not); otherwise only the largest index of V swaps (Murty's rule, which terminates
finitely).  BPP changes many variables per pass, so it needs few passes (2-5 from a
cold start; warm started at the previous ANLS iterate most problems are solved by the
first solve), and the answer is exact (no step size or tolerance on x).

Implementation (why it is shaped this way; numbers are float32 on a 2-core CPU):

* **Problem-last layout, unrolled Cholesky.**  Internally the problems are columns
  (``k x p``, the factor-major layout of :mod:`jnmf.quadratic`), and the masked
  systems ``Q_FF`` (padded with identity rows on G) are factored by a Cholesky written
  out entry by entry, each entry a length-p vector.  XLA fuses this into a few
  vectorized loops over the p problems: for 10304 problems of size 25 it takes ~3 ms,
  where ``jnp.linalg.solve`` / ``cholesky`` on ``(p, k, k)`` (one LAPACK call per
  problem) take 30-40 ms.  The graph has ~k^3/6 nodes, so above ``_UNROLL_MAX`` it
  falls back to the batched LAPACK Cholesky (compile time, not speed, is the limit).
* **Compaction.**  A problem that is feasible is never touched again, and the number
  of infeasible problems falls ~10x per pass (digits, rank 16: 1797 -> 400 -> 12 -> 0
  in a typical half step).  Passes therefore run on all p problems only while more
  than ``p / 8`` are pending; the rest are gathered into a buffer of that size and
  finished there, so the tail passes cost a fraction of a full one.  Each problem
  keeps its own pivot count, so ``max_iter`` applies per problem.  The tail loop is a
  second copy of the pass in the compiled program (it doubles the solver's compile
  time), so below ``_COMPACT_FROM`` problems all passes are full ones: at 1000 and 500
  problems of rank 10 the tail saved no clear run time (ANLS at 1000 x 500, measured
  under heavy load: within the noise), at 4000 and 10000 problems it cut a solve by
  40-55 % (experiments/README.md, "Compile latency").
* **Under vmap** (restarts) everything is elementwise over a leading batch axis or a
  batched gather/scatter; the loops run until the slowest fit is done, frozen fits
  costing one pass each (passes are few, so plain vmap is cheap; see
  experiments/bench_anls.py for vmap vs a loop over fits).

Feasibility uses a relative tolerance of ``10 k eps`` so rounding in a degenerate
problem cannot make it cycle.  A singular Q (a vanished column of the fixed factor,
or collinear ones) gets a ridge ``(ridge + k eps) max(diag Q_i)``: with it every masked
system is positive definite and the solution is that of the slightly regularized
problem.  A Cholesky pivot below the ridge (rounding) is raised to it; one clearly
negative means Q is not PSD: that problem stops pivoting and is reported unconverged.
Unconverged problems are returned as ``max(x, 0)``, or as the warm start ``X0`` where
that has a lower objective, so an ANLS step never increases the objective.  Q must be
positive semidefinite for the result to be the minimizer (with an indefinite Q the
problem is non-convex and BPP finds a KKT point at best).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

_BACKUP_TRIES = 3  # Kim & Park's p-bar: full exchanges allowed without progress
_UNROLL_MAX = 32  # largest k whose Cholesky is unrolled (k=32: ~5.5k fused nodes)
_COMPACT = 8  # tail passes run on a buffer of ceil(p / _COMPACT) problems ...
_COMPACT_MIN = 64  # ... but at least this many (below it a full pass is as cheap)
_COMPACT_FROM = 2048  # and only from this many problems (below it: full passes only)


class NNLSResult(eqx.Module):
    """Outcome of :func:`nnls_bpp`.

    Attributes:
        x: the solutions, one per row of C (``p x k``), non-negative.
        iterations: the number of pivoting passes taken by the slowest row.
        converged: per row, whether the KKT conditions hold (within the tolerance).
    """

    x: Float[Array, "p k"]
    iterations: Int[Array, ""]
    converged: Bool[Array, " p"]


def _matvec(Q: Array, X: Array) -> Array:
    """Q_i x_i for every row (Q shared or per row)."""
    if Q.ndim == 2:
        return X @ Q.T
    return jnp.einsum("pij,pj->pi", Q, X)


def qp_values(Q: Array, C: Array, X: Array) -> Float[Array, " p"]:
    """1/2 x_i' Q_i x_i + c_i' x_i for every row."""
    return jnp.sum(X * (0.5 * _matvec(Q, X) + C), axis=-1)


# ---------------------------------------------------------------- column layout (k x p)
def _matvec_t(Qt: Array, X: Array) -> Array:
    """Q_j x_j for every column x_j of X (``k x p``); Qt is ``k x k`` or ``k x k x p``."""
    if Qt.ndim == 2:
        return Qt @ X
    return jnp.einsum("ijp,jp->ip", Qt, X)


def _masked_solve(Qt: Array, F: Array, rhs: Array, delta: Array, neg_tol: Array) -> tuple[Array, Array]:
    """Solve ``(Q_FF + delta I) x_F = rhs_F``, ``x_G = 0`` for every column (F: ``k x p``).

    Returns (x, failed): failed marks columns with a clearly negative pivot (Q not PSD).
    """
    k, p = rhs.shape
    if k > _UNROLL_MAX:
        return _masked_solve_lapack(Qt, F, rhs, delta, neg_tol)
    rows = [F[i] for i in range(k)]

    def entry(i, j):
        # the masked matrix (Q_FF + delta I, identity on G), one length-p vector (or a
        # scalar) per entry.  Written as selects on the boolean rows of F: the same
        # masking as float products, or as a materialized k x k x p array, makes XLA
        # emit a factorization 3-10x slower (measured at k = 16 and 25).
        if i == j:
            return jnp.where(rows[i], Qt[i, i] + delta, 1.0)
        return jnp.where(rows[i] & rows[j], Qt[i, j], 0.0)

    # Cholesky, left-looking by entries.  Each L[i][j] is a length-p vector; XLA fuses the
    # chains into vectorized loops over the problems (see the module docstring).  The exact
    # shape of this graph matters to XLA's fusion (e.g. a running "or" over the pivots to
    # flag a non-PSD Q made it ~1.7x slower), hence the plain form.
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = entry(j, j)
        for t in range(j):
            s = s - L[j][t] * L[j][t]
        # rounding can leave a pivot of a nearly singular Q_FF just below the ridge: raise it
        d = jnp.sqrt(jnp.maximum(s, delta))
        L[j][j] = d
        r = 1.0 / d
        for i in range(j + 1, k):
            a = entry(i, j)
            for t in range(j):
                a = a - L[i][t] * L[j][t]
            L[i][j] = a * r
    b = jnp.where(F, rhs, 0.0)
    z = [None] * k
    for i in range(k):
        s = b[i]
        for t in range(i):
            s = s - L[i][t] * z[t]
        z[i] = s / L[i][i]
    x = [None] * k
    for i in reversed(range(k)):
        s = z[i]
        for t in range(i + 1, k):
            s = s - L[t][i] * x[t]
        x[i] = s / L[i][i]
    x = jnp.stack([jnp.broadcast_to(xi, (p,)) for xi in x])
    # a non-PSD Q shows as a non-finite or huge solution rather than by a pivot test
    failed = ~jnp.all(jnp.isfinite(x), axis=0)
    del neg_tol
    return jnp.where(F & ~failed, x, 0.0), failed


def _masked_solve_lapack(Qt, F, rhs, delta, neg_tol):
    """:func:`_masked_solve` for large k: batched LAPACK Cholesky on ``p x k x k``."""
    del neg_tol  # LAPACK's Cholesky reports a non-PD matrix by NaNs instead
    k, p = rhs.shape
    Q = jnp.broadcast_to(Qt[..., None] if Qt.ndim == 2 else Qt, (k, k, p)).transpose(2, 0, 1)
    Fp = F.T
    eye = jnp.eye(k, dtype=rhs.dtype)
    ridged = Q + jnp.broadcast_to(delta, (p,))[:, None, None] * eye
    M = jnp.where(Fp[:, :, None] & Fp[:, None, :], ridged, 0.0) + jnp.where(Fp, 0.0, 1.0)[:, :, None] * eye
    chol = jnp.linalg.cholesky(M)
    x = jax.scipy.linalg.cho_solve((chol, True), jnp.where(Fp, rhs.T, 0.0)[..., None])[..., 0]
    failed = ~jnp.all(jnp.isfinite(x), axis=-1)
    return jnp.where(Fp & ~failed[:, None], x, 0.0).T, failed


class _Cols(eqx.Module):
    """Per-column state of the pivoting (all leaves have the column axis last)."""

    F: Array  # (k, n) passive set of the pending / last solve
    x: Array  # (k, n) solution for the last solved F
    ninf: Array  # (n,) Kim & Park's smallest |V| so far
    tries: Array  # (n,) backup tries left
    piv: Array  # (n,) pivoting passes done
    pending: Array  # (n,) F changed since the last solve
    conv: Array  # (n,) the last solve was feasible


def _bpp_columns(Qt, Ct, X0t, max_iter, ridge):
    """Block principal pivoting on the columns of Ct (``k x p``); see the module docstring."""
    k, p = Ct.shape
    dt = Ct.dtype
    eps = jnp.finfo(dt).eps
    rtol = 10 * k * eps
    per_col = Qt.ndim == 3

    diag_q = jnp.diagonal(Qt, axis1=0, axis2=1).T if per_col else jnp.diagonal(Qt)  # (k, p) / (k,)
    scale = jnp.max(diag_q, axis=0)
    scale = jnp.where(scale > 0, scale, 1.0)
    delta = (jnp.asarray(ridge, dt) + k * eps) * scale  # () or (p,)
    neg_tol = 4 * k * eps * scale
    qmax = jnp.max(jnp.abs(Qt), axis=(0, 1)) + delta  # |Q + delta I|
    cmax = jnp.max(jnp.abs(Ct), axis=0)

    def one_pass(Qt, delta, neg_tol, qmax, Ct, cmax, s: _Cols) -> _Cols:
        """Solve the pending columns at their F, check KKT, pivot the infeasible ones."""
        x, failed = _masked_solve(Qt, s.F, -Ct, delta, neg_tol)
        y = jnp.where(s.F, 0.0, _matvec_t(Qt, x) + delta * x + Ct)
        xmax = jnp.max(jnp.abs(x), axis=0)
        V = (s.F & (x < -rtol * xmax)) | (~s.F & (y < -rtol * (cmax + qmax * xmax)))
        V = V & ~failed
        nV = jnp.sum(V, axis=0, dtype=jnp.int32)
        active = (nV > 0) & (s.piv < max_iter)
        progress = nV < s.ninf
        full = progress | (s.tries >= 1)
        last = (k - 1) - jnp.argmax(V[::-1], axis=0)  # Murty's rule: the largest index of V
        single = jnp.arange(k)[:, None] == last[None, :]
        swap = jnp.where(full, V, single) & active
        new_tries = jnp.where(progress, _BACKUP_TRIES, jnp.maximum(s.tries - 1, 0))
        upd = s.pending  # frozen columns keep everything (their x is recomputed identically)
        return _Cols(
            F=jnp.where(upd, s.F ^ swap, s.F),
            x=jnp.where(upd, x, s.x),
            ninf=jnp.where(upd & active & progress, nV, s.ninf),
            tries=jnp.where(upd & active, new_tries, s.tries),
            piv=s.piv + (upd & active),
            pending=upd & active,
            conv=jnp.where(upd, (nV == 0) & ~failed, s.conv),
        )

    F0 = jnp.zeros((k, p), bool) if X0t is None else (X0t > 0)
    s = _Cols(
        F=F0,
        x=jnp.zeros((k, p), dt),
        ninf=jnp.full((p,), k + 1, jnp.int32),
        tries=jnp.full((p,), _BACKUP_TRIES, jnp.int32),
        piv=jnp.zeros((p,), jnp.int32),
        pending=jnp.ones((p,), bool),
        conv=jnp.zeros((p,), bool),
    )
    # the tail loop is a second copy of the pass in the program, compiled as long as the
    # rest of the solver: worth it only for many problems (see _COMPACT_FROM)
    size = min(p, max(_COMPACT_MIN, -(-p // _COMPACT))) if p >= _COMPACT_FROM else p
    args = (Qt, delta, neg_tol, qmax, Ct, cmax)

    # Full passes while more columns are pending than the buffer holds (at least one: the
    # first solve at the warm start is over all columns).  Every solve runs in a loop body,
    # so a problem gets the same rounding whether it is solved first or after pivoting
    # (which matters for a singular Q, whose split across collinear columns is set by the
    # tiny ridge).
    s = jax.lax.while_loop(
        lambda s: jnp.sum(s.pending) > (size if size < p else 0),
        lambda s: one_pass(*args, s),
        s,
    )
    if size < p:
        # Tail passes on the (at most `size`) pending columns only: a pending column is
        # the only kind that can change.
        (idx,) = jnp.nonzero(s.pending, size=size, fill_value=p)
        take = jnp.minimum(idx, p - 1)

        def gather(a):
            return a[..., take]

        sub = jax.tree.map(gather, s)
        # the problem data: Q and its scalars only when there is one Q per column
        per_column = (per_col, per_col, per_col, per_col, True, True)
        sub_args = tuple(gather(a) if b else a for a, b in zip(args, per_column, strict=True))
        sub = eqx.tree_at(lambda c: c.pending, sub, sub.pending & (idx < p))
        sub = jax.lax.while_loop(lambda c: jnp.any(c.pending), lambda c: one_pass(*sub_args, c), sub)
        s = jax.tree.map(lambda a, b: a.at[..., idx].set(b, mode="drop"), s, sub)
    return s.x, jnp.max(s.piv), s.conv


def nnls_bpp_columns(
    Q: Float[Array, "k k"] | Float[Array, "p k k"],
    Ct: Float[Array, "k p"],
    X0t: Float[Array, "k p"] | None = None,
    *,
    max_iter=100,
    ridge=0.0,
) -> tuple[Array, Array, Array]:
    """:func:`nnls_bpp` on column problems: ``Ct``, ``X0t`` and the solution are ``k x p``
    (the factor-major layout of the ANLS half steps, no transposes).

    Returns (x ``k x p``, iterations, converged ``p``).
    """
    Ct = jnp.asarray(Ct)
    dt = Ct.dtype
    Q = jnp.asarray(Q, dt)
    Qt = Q if Q.ndim == 2 else jnp.transpose(Q, (1, 2, 0))
    max_iter = jnp.asarray(max_iter, jnp.int32)
    x, iterations, converged = _bpp_columns(Qt, Ct, X0t, max_iter, ridge)
    x = jnp.maximum(x, 0.0)
    if X0t is not None:
        # Safeguard for columns the pivoting did not finish: never worse than the warm start.
        X0t = jnp.maximum(jnp.asarray(X0t, dt), 0.0)

        def values(X):
            return jnp.sum(X * (0.5 * _matvec_t(Qt, X) + Ct), axis=0)

        keep = ~converged & (values(X0t) < values(x))
        x = jnp.where(keep, X0t, x)
    return x, iterations, converged


def nnls_bpp(
    Q: Float[Array, "k k"] | Float[Array, "p k k"],
    C: Float[Array, "p k"],
    X0: Float[Array, "p k"] | None = None,
    *,
    max_iter=100,
    ridge=0.0,
) -> NNLSResult:
    """Solve NNQP for every row of C by block principal pivoting (see module docstring).

    Args:
        Q: the shared ``k x k`` matrix, or ``p x k x k`` (one per row); symmetric PSD.
        C: the linear terms, one problem per row.
        X0: optional warm start (``p x k``, non-negative); its positive entries are the
            initial passive set and it is the fallback of unconverged rows.
        max_iter: the cap on pivoting passes per row (traced; it never recompiles).
        ridge: extra relative ridge added to the default ``k eps`` (see module docstring).

    Jittable and vmappable.
    """
    C = jnp.asarray(C)
    X0t = None if X0 is None else jnp.asarray(X0, C.dtype).T
    x, iterations, converged = nnls_bpp_columns(Q, C.T, X0t, max_iter=max_iter, ridge=ridge)
    return NNLSResult(x.T, iterations, converged)


def nnls_gram(
    Q: Float[Array, "k k"] | Float[Array, "p k k"],
    C: Float[Array, "p k"],
    X0: Float[Array, "p k"] | None = None,
    *,
    max_iter=100,
    ridge=0.0,
) -> Float[Array, "p k"]:
    """``argmin_{x >= 0} 1/2 x' Q x + c' x`` for each row c of C (the x of :func:`nnls_bpp`).

    For least squares ``min ||A x - b||`` take ``Q = A'A`` and ``c = -A'b``.
    """
    return nnls_bpp(Q, C, X0, max_iter=max_iter, ridge=ridge).x
