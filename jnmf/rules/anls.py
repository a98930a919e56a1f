"""ANLS: alternating non-negative least squares (Kim & Park 2008; DAMC Lecture 6, Xiamen
University 2022, section 2), for eq. 3.

Each half step solves its subproblem (Pav 2024, eqs. 6-9) exactly:

    X <- argmin_{X >= 0} phi(X) = 1/2 <X, G X> + <d, X>.

When every weight acting on the rows of X (the p side: the loss weight, and the
first weight of each L2 pair) is diagonal, phi separates over the p rows of X into

    min_{x >= 0} 1/2 x' Q_i x + c_i' x,   Q_i = w_i gram + sum_j a_ij B_j,   c_i = d_i,

with ``w_i``, ``a_ij`` the diagonals of the p-side weights and ``B_j`` the k-side weights
(any kind: the non-orthogonality ``gamma (11' - I)`` on the k side just adds to Q).
These are solved together by block principal pivoting (:mod:`jnmf.nnls`), warm
started at the current iterate.  When all p-side weights are identity or scalar,
one Q is shared by all rows (the common case); otherwise each row gets its own.

Supported: any ``W_1L`` / ``W_1R``; ridge (``lambda_2``); ``gamma_2L`` (k side for L);
identity/scalar/diagonal ``W_0R`` / ``W_0C``; general L2 pairs whose p-side weight is
diagonal.

An elementwise loss weight M (missing values) gives every row of X its own Gram
``F Diag(M_c) F'``: Q is then ``p x k x k`` (memory ``p k^2`` per half step; the Grams cost
``q p k^2``, k times a product with the data).

Not supported (p-side non-diagonal weights couple the rows): ``full`` or ``offdiag``
``W_0R`` / ``W_0C``, ``gamma_2R`` (in the R step, on X = R', its ``n x n`` weight is on
the p side), and L2 pairs with a full p-side weight.  Such weights are replaced by
their diagonals (zero for ``offdiag``), so the step would be exact only when they
vanish: :meth:`ANLS.check` rejects them (``gamma_2R`` when its value is non-zero).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array

from ..compile_options import CHEAP_OPTIONS
from ..nnls import nnls_bpp_columns
from ..problem import Problem
from ..quadratic import HalfProblem
from ..weights import Weight
from .base import AlternatingRule, HalfStep, as_setting, nonzero_value, unsupported

_SHARED = ("identity", "scalar")


def _scalar_of(w: Weight, dtype) -> Array:
    return jnp.ones((), dtype) if w.kind == "identity" else w.value.astype(dtype)


def anls_supported(problem: Problem) -> bool:
    """Whether the half steps of ANLS are exact for this problem's weight *kinds*.

    True when ``W_0R``, ``W_0C`` and the p-side weights of the L2 pairs (the row
    weights of L's pairs, the column weights of R's pairs) are identity, scalar or
    diagonal, or ``offdiag`` on R's column side (gamma_2R: exact only when its value
    is zero, which the caller must check since values are traced).
    """
    diagonal = ("identity", "scalar", "diag")
    return (
        problem.W_0R.kind in diagonal
        and problem.W_0C.kind in diagonal
        and all(row.kind in diagonal for row, _ in problem.penalty_L.pairs())
        and all(col.kind in diagonal + ("offdiag",) for _, col in problem.penalty_R.pairs())
    )


def half_problem_qp(hp: HalfProblem) -> tuple[Array, Array]:
    """(Q, C) of the row-separated half problem: Q is ``k x k`` (shared) or ``p x k x k``,
    C is d as ``p x k`` (one row per independent k-variable QP).

    p-side weights enter through their diagonals; ``offdiag`` ones (zero diagonal)
    are dropped, see the module docstring.
    """
    k, p = hp.linear.shape
    dt = hp.linear.dtype
    terms = [(w, B) for w, B in hp.terms() if w.kind != "offdiag"]
    if hp.masked:
        # an elementwise loss weight gives every row of X its own Gram (p x k x k)
        Q = hp.column_grams()
        for w, B in terms:
            shared = w.kind in _SHARED
            Q = Q + (_scalar_of(w, dt) * B if shared else w.diagonal(p, dt)[:, None, None] * B[None])
    elif all(w.kind in _SHARED for w, _ in terms):
        Q = sum(_scalar_of(w, dt) * B for w, B in terms)
    else:
        Q = sum(w.diagonal(p, dt)[:, None, None] * B[None] for w, B in terms)
    return Q, hp.linear.T


def anls_half_step(hp: HalfProblem, Xt: Array, max_iter: Array, ridge: Array) -> Array:
    """The exact half step: BPP on every column of the factor-major Xt (one k-variable
    NNQP per row of X), warm started at the current iterate.

    Plain ``jax.vmap`` over fits batches it well (the solver is elementwise over the
    problems, see :mod:`jnmf.nnls`), so no per-fit loop is forced here.
    """
    Q, _ = half_problem_qp(hp)
    return nnls_bpp_columns(Q, hp.linear, Xt, max_iter=max_iter, ridge=ridge)[0]


class ANLS(AlternatingRule):
    """Alternating exact NNLS half steps: L given R, then R given the new L.

    ``max_nnls_iter`` caps the pivoting iterations of each half step (traced);
    ``ridge`` adds a relative ridge to the subproblems' Q (beyond the ``k eps`` that
    keeps singular Gram matrices solvable).  See the module docstring for support.
    """

    method_name: ClassVar[str] = "anls"
    # XLA:CPU's fusion emitters compile the pivoting and the unrolled Cholesky as ~100
    # small kernels per solve; the older loop emitters compile ANLS's loop about 2x
    # faster.  The price, measured on a quiet machine at 1000 x 500, rank 10: about 1.4x
    # the run time per iteration in float32 and 1.1x in float64 (experiments/README.md,
    # "Issue 15 on a quiet machine, again after stop 20's merges").
    compiler_options: ClassVar[dict | None] = {"xla_cpu_use_fusion_emitters": False}
    # A small problem's loop (jnmf.compile_options.SMALL_LOOP_ENTRIES) at LLVM level 0 too:
    # at 1000 x 500, rank 10, its compile takes ~2.2 s less CPU and each iteration ~3.8 ms
    # more, even at ~600 iterations; ANLS's fits there stop after 18-36 (experiments/README.md,
    # "Cold jnmf fit").
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    max_nnls_iter: Array
    ridge: Array

    def __init__(self, max_nnls_iter=100, ridge=0.0):
        self.max_nnls_iter = as_setting(max_nnls_iter, jnp.int32)
        self.ridge = as_setting(ridge)

    def check(self, problem: Problem) -> None:
        if not anls_supported(problem):
            raise unsupported(
                self,
                "full or non-orthogonality W_0R / W_0C or non-diagonal L2 row weights "
                "(its NNLS half steps are solved row by row)",
            )
        if nonzero_value(problem.penalty_R.gamma_2):
            raise unsupported(self, "gamma_2R (it couples the columns of R)")

    def half_step(self, hp: HalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        return HalfStep(anls_half_step(hp, Xt, self.max_nnls_iter, self.ridge.astype(Xt.dtype)), aux)
