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
finitely).  Why BPP rather than Lawson-Hanson active set or projected Newton:

* it changes many variables per iteration, so it needs few iterations (typically
  2-5 from a cold start, 1-2 from a warm start at the previous ANLS iterate), and
  the solve is exact at the end (no step-size or convergence tolerance on x);
* each iteration is the same fixed-shape work for every row (one masked ``k x k``
  solve, inactive variables replaced by identity rows/columns), so it batches over
  the p rows with ``jnp.linalg.solve`` inside one ``lax.while_loop``; Lawson-Hanson
  adds one variable per iteration (at least |F| iterations) and has an inner loop.

The loop stops when every row is feasible or after ``max_iter`` iterations.
Feasibility uses a relative tolerance of ``10 k eps`` so rounding in a degenerate
problem cannot make it cycle.  A singular Q (a vanished column of the fixed factor,
or collinear ones) gets a ridge ``(ridge + k eps) max(diag Q_i)``: with it every masked
system is non-singular and the solution is that of the slightly regularized problem.
Rows that did not converge within ``max_iter`` are returned as ``max(x, 0)``, or as the
warm start ``X0`` where that has a lower objective, so an ANLS step never increases
the objective.  Q must be positive semidefinite for the result to be the minimizer
(with an indefinite Q the problem is non-convex and BPP finds a KKT point at best).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

_BACKUP_TRIES = 3  # Kim & Park's p-bar: full exchanges allowed without progress


class NNLSResult(eqx.Module):
    """Outcome of :func:`nnls_bpp`.

    Attributes:
        x: the solutions, one per row of C (``p x k``), non-negative.
        iterations: the number of pivoting iterations taken (shared by all rows).
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
        max_iter: the cap on pivoting iterations (traced; it never recompiles).
        ridge: extra relative ridge added to the default ``k eps`` (see module docstring).

    Jittable and vmappable; the work per iteration is p LU solves of size ``k x k``.
    """
    C = jnp.asarray(C)
    Q = jnp.asarray(Q, C.dtype)
    p, k = C.shape
    dt = C.dtype
    eps = jnp.finfo(dt).eps
    rtol = 10 * k * eps

    eye = jnp.eye(k, dtype=dt)
    diag_q = jnp.diagonal(Q, axis1=-2, axis2=-1)
    scale = jnp.max(diag_q, axis=-1)
    delta = (jnp.asarray(ridge, dt) + k * eps) * jnp.where(scale > 0, scale, 1.0)
    Qr = Q + delta[..., None, None] * eye  # () or (p,) broadcast onto the diagonal
    qmax = jnp.max(jnp.abs(Qr), axis=(-2, -1))
    cmax = jnp.max(jnp.abs(C), axis=-1)

    def solve(F: Array) -> tuple[Array, Array]:
        both = F[:, :, None] & F[:, None, :]
        M = jnp.where(both, Qr, 0.0) + jnp.where(F, 0.0, 1.0)[:, :, None] * eye
        rhs = jnp.where(F, -C, 0.0)
        x = jnp.linalg.solve(M, rhs[..., None])[..., 0]
        x = jnp.where(F, x, 0.0)
        y = jnp.where(F, 0.0, _matvec(Qr, x) + C)
        return x, y

    def infeasible(F: Array, x: Array, y: Array) -> Array:
        xmax = jnp.max(jnp.abs(x), axis=-1)
        tol_x = (rtol * xmax)[:, None]
        tol_y = (rtol * (cmax + qmax * xmax))[:, None]
        return (F & (x < -tol_x)) | (~F & (y < -tol_y))

    F0 = jnp.zeros((p, k), bool) if X0 is None else (X0 > 0)
    x0, y0 = solve(F0)
    max_iter = jnp.asarray(max_iter, jnp.int32)

    def cond(carry):
        it, F, x, y, _, _ = carry
        return (it < max_iter) & jnp.any(infeasible(F, x, y))

    def body(carry):
        it, F, x, y, ninf, tries = carry
        V = infeasible(F, x, y)
        nV = jnp.sum(V, axis=-1, dtype=jnp.int32)
        active = nV > 0
        progress = nV < ninf
        full = progress | (tries >= 1)
        ninf = jnp.where(active & progress, nV, ninf)
        new_tries = jnp.where(progress, _BACKUP_TRIES, jnp.maximum(tries - 1, 0))
        tries = jnp.where(active, new_tries, tries)
        last = (k - 1) - jnp.argmax(V[:, ::-1], axis=-1)  # largest infeasible index
        single = jnp.arange(k)[None, :] == last[:, None]
        swap = jnp.where(full[:, None], V, single) & active[:, None]
        F = F ^ swap
        x, y = solve(F)
        return it + 1, F, x, y, ninf, tries

    carry = (
        jnp.zeros((), jnp.int32),
        F0,
        x0,
        y0,
        jnp.full((p,), k + 1, jnp.int32),
        jnp.full((p,), _BACKUP_TRIES, jnp.int32),
    )
    it, F, x, y, _, _ = jax.lax.while_loop(cond, body, carry)
    converged = ~jnp.any(infeasible(F, x, y), axis=-1)
    x = jnp.maximum(x, 0.0)
    if X0 is not None:
        # Safeguard for rows the pivoting did not finish: never worse than the warm start.
        X0 = jnp.maximum(jnp.asarray(X0, dt), 0.0)
        keep = ~converged & (qp_values(Q, C, X0) < qp_values(Q, C, x))
        x = jnp.where(keep[:, None], X0, x)
    return NNLSResult(x, it, converged)


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
