"""The half-step quadratic subproblem of Pav (2024), eqs. 6-9 (layer 2).

With one factor fixed, eq. 3 is the non-negative quadratic program

    phi(x) = 1/2 x' G x + d' x,     x = vec(X) >= 0                (eq. 9)

with (eq. 8)

    G = (R W_0C R') (x) (W_0R) + sum_j W_2C_j (x) W_2R_j
    d = vec(W_1 - W_0R Y W_0C R').

G is never formed: :meth:`HalfProblem.apply_G` applies it in matrix form.

**Layout.**  Both half steps are written once, on the unknown stored
*factor-major*: ``Xt`` of shape ``k x p`` (one row per factor).  For the R step
``Xt = R`` itself; for the L step ``Xt = L'``, and jnmf's rules keep L in that
layout (``Lt``) throughout a fit.  Then every product with the data is a
"short-wide times tall" GEMM (``R @ (W_0R Y W_0C)'`` for the L step, ``Lt @ (W_0R Y W_0C)``
for the R step), the fastest shape on CPU and the one that stacks restarts along
the rank axis under ``vmap``.  In this layout (transpose eq. 6 for the L step)

    G Xt = sum_t B_t Xt A_t,   over the quadratic terms t = (k-side B_t, p-side A_t):
           the loss term (B = F W F', A = the free factor's loss weight) and each L2 pair,
    d    = W_1 - F (W Y W)     (k x p; F the fixed factor, factor-major).

Terms whose p-side weight is a multiple of I (the loss with identity or scalar
weights, ridge, non-orthogonality of L) fold into one ``k x k`` *mixing* matrix,
so in the common case ``G Xt`` is a single small GEMM, with no extra pass over Xt
per penalty.

**Elementwise weights (missing values).**  With a loss ``1/2 sum M (.) (Y - LR)^2`` the
loss part of G is no Kronecker product: column c of the unknown has its own Gram
``F Diag(M_t[:, c]) F'``.  G is still applied matrix-free, as
``F (M_t (.) (F' Xt))`` (``M_t`` the weight in the fixed-by-free ``q x p`` layout of the
data), at the cost of two ``k x q x p`` products and one ``q x p`` temporary, i.e. an
extra m x n array in memory per half step.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .data import MaskOperator
from .problem import Problem
from .weights import Weight

_SCALAR_KINDS = ("identity", "scalar")


def positive_or_one(F: Array) -> Array:
    """F where it is positive, 1 elsewhere (NaN included): the one guard of every
    Lee-Seung ratio ``x / (G x)`` in jnmf."""
    return jnp.where(F > 0, F, 1.0)


def lee_seung_direction(X: Array, grad: Array, GX: Array) -> Array:
    """h = -grad (.) x (/) Gx, eq. 22 (the multiplicative update as an additive direction)."""
    return -grad * X / positive_or_one(GX)


def pick_direction(X: Array, grad: Array, GX: Array) -> Array:
    """PICK_DIRECTION of Algorithm 3: the Lee-Seung direction made safe.

    Where X is zero the direction is ``max(-grad, 0)``, so a zero element can grow
    (the multiplicative update can never leave zero).
    """
    return jnp.where(X <= 0, jnp.maximum(-grad, 0.0), lee_seung_direction(X, grad, GX))


def anneal(tau_k: Array, rate: Array) -> Array:
    """tau_{k} = (1 - rate) tau_{k-1} + rate: the step fraction of Algorithms 2-3 tends to 1."""
    return (1 - rate) * tau_k + rate


def snap_zeros(X: Array, zero_tolerance: Array) -> Array:
    """Elements ``<= zero_tolerance`` set to exactly zero (rnnmf, after each iteration)."""
    return jnp.where(X <= zero_tolerance, 0.0, X)


def max_abs(x: Array) -> Array:
    """max |x| (0 for an empty array): the step size rnnmf's ``min_xstep`` test reads."""
    return jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)


def giqpm_step(X: Array, grad: Array, H: Array, GH: Array | None, tau_k: Array) -> tuple[Array, Array]:
    """GIQPM_STEP (Algorithms 2-3): X + alpha H with alpha = min(tau_k alpha_hat, alpha*).

    ``GH`` None means ``check_optimal_step=False`` (alpha* = 1).  A zero direction,
    or a step length that is not finite (no curvature and no bound), takes no
    step.  Returns the new X and the largest absolute step.
    """
    alpha_hat = max_feasible_step(X, H)
    alpha_star = jnp.ones((), X.dtype) if GH is None else optimal_step_length(grad, H, GH)
    alpha = jnp.minimum(tau_k * alpha_hat, alpha_star)
    alpha = jnp.where(jnp.isfinite(alpha) & jnp.any(H != 0), alpha, 0.0).astype(X.dtype)
    step = alpha * H
    return X + step, max_abs(step)


def optimal_step_length(grad: Array, H: Array, GH: Array) -> Array:
    """alpha* = -<grad, H> / <H, G H>, the exact minimizer along H (eq. 24).

    Returns +inf where the curvature <H, G H> is not positive but the direction
    descends, and 0 where H is not a descent direction at all.
    """
    slope = jnp.sum(grad * H)
    curvature = jnp.sum(H * GH)
    safe = jnp.where(curvature > 0, curvature, 1.0)
    return jnp.where(curvature > 0, -slope / safe, jnp.where(slope < 0, jnp.inf, 0.0))


def max_feasible_step(X: Array, H: Array) -> Array:
    """alpha_hat = min{-x_i / h_i : h_i < 0}, the longest step keeping X + alpha H >= 0.

    +inf when no element of H is negative (Algorithm 2, line 3).
    """
    neg = H < 0
    return jnp.min(jnp.where(neg, -X / jnp.where(neg, H, -1.0), jnp.inf))


def projected_gradient(X: Array, grad: Array) -> Array:
    """The KKT residual of min_{x>=0} phi: grad where x > 0, min(grad, 0) where x = 0.

    It vanishes exactly at points satisfying the KKT conditions of eq. 10.
    """
    return jnp.where(X > 0, grad, jnp.minimum(grad, 0.0))


def kkt_residual(X: Array, grad: Array) -> Array:
    """Frobenius norm of :func:`projected_gradient`."""
    return jnp.sqrt(jnp.sum(projected_gradient(X, grad) ** 2))


class HalfProblem(eqx.Module):
    """phi(Xt) = 1/2 <Xt, G Xt> + <d, Xt> for a factor-major unknown Xt (``k x p``).

    Attributes:
        gram: ``F W F'`` of the fixed factor F (``R W_0C R'`` in the L step,
            ``L' W_0R L`` in the R step), ``k x k``.
        weight: the free factor's ``p x p`` loss weight (W_0R in the L step, W_0C in
            the R step); it acts on the columns of Xt.
        linear: d of eq. 8 in factor-major layout, ``W_1 - F (W Y W)``, ``k x p``.
        penalties: the L2 pairs as (k-side, p-side) weights.
        fixed_size: q, the length of the fixed factor (n in the L step, m in the R
            step); cost models such as accelerated HALS's need it.
        data_entries: the entries of Y the product with the data visits (``m n`` for dense
            data, the stored ones for sparse data; 0: unknown, taken as ``p q``).
        free_sharded: the free factor's p axis is split over the devices of a mesh (the
            L step of a row-sharded fit): its columns must not be cut in a loop.
        fixed: the fixed factor F (``k x q``), kept only with an elementwise weight.
        mask: the elementwise weight in ``q x p`` layout (``M'`` in the L step, ``M`` in the
            R step) as a :class:`~jnmf.data.MaskOperator` of the data operator, or None.
            With it the loss term is ``F (mask (.) (F' Xt))`` and ``gram`` is zero (no
            Kronecker part).
    """

    gram: Float[Array, "k k"]
    weight: Weight
    linear: Float[Array, "k p"]
    penalties: tuple[tuple[Weight, Weight], ...]
    fixed_size: int = eqx.field(static=True, default=0)
    data_entries: int = eqx.field(static=True, default=0)
    free_sharded: bool = eqx.field(static=True, default=False)
    fixed: Float[Array, "k q"] | None = None
    mask: MaskOperator | None = None

    @property
    def masked(self) -> bool:
        """Whether the loss carries an elementwise weight (static)."""
        return self.mask is not None

    def terms(self) -> list[tuple[Weight, Array]]:
        """Every quadratic term with a Kronecker form, as (p-side weight, dense k-side
        matrix): the loss (unless elementwise weighted) and the L2 pairs."""
        k = self.gram.shape[0]
        dt = self.gram.dtype
        pens = [(p_side, k_side.dense(k, dt)) for k_side, p_side in self.penalties]
        if self.masked and not self.mask.unit:
            return pens
        return [(self.weight, self.gram)] + pens

    def masked_loss_G(self, Xt: Array) -> Array:
        """The elementwise-weighted loss part of G Xt: ``F (mask (.) (F' Xt))``."""
        return self.mask.apply(self.fixed, Xt)

    def masked_loss_diagonal(self) -> Array:
        """diag of the weighted loss part of G, ``(F (.) F) mask`` (``k x p``)."""
        return self.mask.diagonal(self.fixed)

    def column_grams(self) -> Float[Array, "p k k"]:
        """The loss's ``k x k`` Gram of every column c, ``F Diag(mask[:, c]) F'`` (ANLS)."""
        return self.mask.column_grams(self.fixed)

    def split_terms(self) -> tuple[Array, list[tuple[Weight, Array]]]:
        """(mixing, others): the sum of the terms whose p-side weight is a multiple of
        I, folded into one k x k matrix, and the remaining (p-side, k-side) terms."""
        k = self.gram.shape[0]
        mixing = jnp.zeros((k, k), self.gram.dtype)
        others = []
        for p_side, B in self.terms():
            if p_side.kind == "identity":
                mixing = mixing + B
            elif p_side.kind == "scalar":
                mixing = mixing + p_side.value * B
            else:
                others.append((p_side, B))
        return mixing, others

    def apply_G(self, Xt: Float[Array, "k p"]) -> Float[Array, "k p"]:
        """G vec(X) in factor-major matrix form (eq. 8): ``sum_t B_t Xt A_t``."""
        mixing, others = self.split_terms()
        out = mixing @ Xt
        for p_side, B in others:
            out = out + p_side.right(B @ Xt)
        if self.masked:
            out = out + self.masked_loss_G(Xt)
        return out

    def gradient(self, Xt: Array, GX: Array | None = None) -> Array:
        """G x + d (the gradient below eq. 10), factor-major."""
        return (self.apply_G(Xt) if GX is None else GX) + self.linear

    def value(self, Xt: Array) -> Array:
        """phi(Xt) of eq. 9 (without the constant c of eq. 7)."""
        return 0.5 * jnp.sum(Xt * self.apply_G(Xt)) + jnp.sum(self.linear * Xt)

    def diagonal(self) -> Float[Array, "k p"]:
        """diag(G): the exact curvature of each coordinate."""
        k, p = self.linear.shape
        dt = self.linear.dtype
        out = jnp.zeros((k, p), dt)
        for p_side, B in self.terms():
            out = out + jnp.diagonal(B)[:, None] * p_side.diagonal(p, dt)[None, :]
        if self.masked:
            out = out + self.masked_loss_diagonal()
        return out

    def block_majorizer(self) -> Float[Array, "k p"]:
        """A diagonal majorizer of the block of G of each factor row (HALS's curvature).

        The block of row j is ``sum_t B_t[j, j] A_t``; each p-side A_t is replaced by
        Diag(A_t 1) >= A_t (Lemma 2.1 with b = 1; entries are non-negative), which is
        A_t itself when A_t is diagonal, so then this equals :meth:`diagonal`.
        """
        k, p = self.linear.shape
        dt = self.linear.dtype
        out = jnp.zeros((k, p), dt)
        for p_side, B in self.terms():
            out = out + jnp.diagonal(B)[:, None] * p_side.row_sums(p, dt)[None, :]
        if self.masked:
            # the masked loss's blocks are diagonal already: their diagonal is exact
            out = out + self.masked_loss_diagonal()
        return out


def cross_gram(A: Array, B: Array) -> Array:
    """``A @ B.T`` for factor-major A, B (``k x q``): the Gram matrices of eq. 8."""
    return A @ B.T


def _half_problem(
    F,
    product,
    fixed_weight: Weight,
    free_weight: Weight,
    W_1,
    pairs,
    mask,
    entries: int = 0,
    free_sharded: bool = False,
) -> HalfProblem:
    """The subproblem of a factor-major unknown given the fixed factor F (``k x q``), the
    data product ``F (W Y W)`` in (k x p) layout and, optionally, the elementwise weight."""
    if mask is None or mask.unit:
        gram = cross_gram(fixed_weight.right(F), F)
    else:
        gram = jnp.zeros((F.shape[0], F.shape[0]), F.dtype)
    return HalfProblem(
        gram=gram,
        weight=free_weight,
        linear=W_1 - product,
        penalties=tuple(pairs),
        fixed_size=F.shape[-1],
        data_entries=entries,
        free_sharded=free_sharded,
        fixed=None if mask is None else F,
        mask=mask,
    )


def half_problem_L(problem: Problem, Lt: Array, R: Array) -> HalfProblem:
    """The subproblem in L with R fixed (eq. 6 with X = L), on Xt = L' (``k x m``).

    Lt is not needed to build it; the argument keeps the signature symmetric.
    """
    del Lt
    W_1 = problem.penalty_L.l1()
    W_1 = W_1.T if W_1.ndim == 2 else W_1
    pairs = [(col, row) for row, col in problem.penalty_L.pairs()]  # L' W_2R L W_2C: k-side is W_2C
    product = problem.data_product_L(R)
    mask = problem.data.mask_operator("L")
    data = problem.data
    return _half_problem(
        R, product, problem.W_0C, problem.W_0R, W_1, pairs, mask, data.entries, data.rows_sharded
    )


def half_problem_R(problem: Problem, Lt: Array, R: Array) -> HalfProblem:
    """The subproblem in R with L fixed, on Xt = R (``k x n``)."""
    del R
    pen = problem.penalty_R
    product = problem.data_product_R(Lt)
    mask = problem.data.mask_operator("R")
    return _half_problem(
        Lt, product, problem.W_0R, problem.W_0C, pen.l1(), pen.pairs(), mask, problem.data.entries
    )


def half_problem(problem: Problem, side: str, Lt: Array, R: Array) -> HalfProblem:
    """The half problem of ``side`` ("L" or "R") at the current factors (one code path)."""
    return (half_problem_L if side == "L" else half_problem_R)(problem, Lt, R)


def penalty_L_from_gram(problem: Problem, Lt: Array, LtLt: Array | None = None) -> Array:
    """tr(W_1L' L) + 1/2 sum_j tr(L' W_2RL_j L W_2CL_j), cheaply in factor-major layout.

    Pairs with a scalar or identity m-side weight use the k x k Gram ``Lt Lt'``:
    ``tr(L' a L B) = a <B, Lt Lt'>``; others fall back to the direct form.
    """
    k = Lt.shape[0]
    dt = Lt.dtype
    W_1 = problem.penalty_L.l1()
    total = jnp.sum(W_1.T * Lt) if W_1.ndim == 2 else W_1 * jnp.sum(Lt)
    gram = cross_gram(Lt, Lt) if LtLt is None else LtLt
    for row, col in problem.penalty_L.pairs():
        if row.kind in _SCALAR_KINDS:
            a = 1.0 if row.kind == "identity" else row.value
            total = total + 0.5 * a * jnp.sum(col.dense(k, dt) * gram)
        else:
            total = total + 0.5 * jnp.sum(Lt * col.left(row.right(Lt)))
    return total


def objective_after_R_step(problem: Problem, hp_R: HalfProblem, Lt: Array, R: Array) -> Array:
    """eq. 3 at (L, R) reusing the R half problem built from this L.

    eq. 3 = phi_R(R) + 1/2 tr(Y' W_0R Y W_0C) + (L's penalty terms); phi_R needs only
    O(n k^2) work and L's penalties O(k^2) given the Gram matrix, so rules report the
    objective every iteration almost for free.  In float32 this loses ~1e-7 of
    ||Y||^2 to cancellation, which is why final objectives are recomputed from the
    residual.
    """
    LtLt = hp_R.gram if problem.W_0R.kind == "identity" and not problem.masked else None
    return hp_R.value(R) + problem.half_data_norm + penalty_L_from_gram(problem, Lt, LtLt)


class VectorQP(eqx.Module):
    """An explicit QP min_{x>=0} 1/2 x'Gx + d'x (eq. 10), for :func:`jnmf.giqpm`."""

    G: Float[Array, "n n"]
    d: Float[Array, " n"]

    def apply_G(self, x: Array) -> Array:
        return self.G @ x

    def gradient(self, x: Array, Gx: Array | None = None) -> Array:
        return (self.G @ x if Gx is None else Gx) + self.d

    def value(self, x: Array) -> Array:
        return 0.5 * x @ (self.G @ x) + self.d @ x
