"""The half-step quadratic subproblem of Pav (2024), eqs. 6-9 (layer 2).

With one factor fixed, eq. 3 is the non-negative quadratic program

    phi(x) = 1/2 x' G x + d' x,     x = vec(X) >= 0                (eq. 9)

with (eq. 8)

    G = (R W_0C R') (x) (W_0R) + sum_j W_2C_j (x) W_2R_j
    d = vec(W_1 - W_0R Y W_0C R').

G is never formed: :meth:`HalfProblem.apply_G` applies it in matrix form,
``G vec(X) = vec(W_0R X (R W_0C R') + sum_j W_2R_j X W_2C_j)``.

Both half steps use this one code path.  The L step is stated directly; the R
step is stated on ``X = R'`` (transpose eq. 3: ``Y' ~ R' L'``, the row weight
becomes W_0C and each penalty pair is swapped), so every update rule is written
once, for a "left" unknown ``X`` of shape ``p x k``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .problem import PenaltyPairs, Problem, _pair_quadratic, penalty_value
from .weights import Weight


def optimal_step_length(grad: Array, H: Array, GH: Array) -> Array:
    """alpha* = -<grad, H> / <H, G H>, the exact minimizer along H (eq. 24).

    Returns +inf where the curvature <H, G H> is not positive but the direction
    descends, and 0 where H is not a descent direction at all.
    """
    slope = jnp.sum(grad * H)
    curvature = jnp.sum(H * GH)
    safe = jnp.where(curvature > 0, curvature, 1.0)
    alpha = jnp.where(curvature > 0, -slope / safe, jnp.where(slope < 0, jnp.inf, 0.0))
    return alpha


def max_feasible_step(X: Array, H: Array) -> Array:
    """alpha_hat = min{-x_i / h_i : h_i < 0}, the longest step keeping X + alpha H >= 0.

    +inf when no element of H is negative (Algorithm 2, line 3).
    """
    neg = H < 0
    ratios = jnp.where(neg, -X / jnp.where(neg, H, -1.0), jnp.inf)
    return jnp.min(ratios)


def projected_gradient(X: Array, grad: Array) -> Array:
    """The KKT residual of min_{x>=0} phi: grad where x > 0, min(grad, 0) where x = 0.

    It vanishes exactly at points satisfying the KKT conditions of eq. 10.
    """
    return jnp.where(X > 0, grad, jnp.minimum(grad, 0.0))


def kkt_residual(X: Array, grad: Array) -> Array:
    """Frobenius norm of :func:`projected_gradient`."""
    return jnp.sqrt(jnp.sum(projected_gradient(X, grad) ** 2))


class HalfProblem(eqx.Module):
    """phi(X) = 1/2 <X, G X> + <d, X> for a ``p x k`` unknown X (eqs. 6-9).

    Attributes:
        gram: the ``k x k`` matrix ``F W F'`` of the fixed factor F (``R W_0C R'``
            for the L step, ``L' W_0R L`` for the R step).
        row_weight: the ``p x p`` loss weight acting on the rows of X.
        linear: d in matrix form, ``W_1 - W_0R Y W_0C R'`` (``p x k``).
        penalties: the (p-side, k-side) weight pairs of the L2 terms.
    """

    gram: Float[Array, "k k"]
    row_weight: Weight
    linear: Float[Array, "p k"]
    penalties: PenaltyPairs

    def apply_G(self, X: Float[Array, "p k"]) -> Float[Array, "p k"]:
        """G vec(X) in matrix form (eq. 8), O(p k^2) plus the weights' cost."""
        return self.row_weight.left(X) @ self.gram + _pair_quadratic(self.penalties, X)

    def gradient(self, X: Array, GX: Array | None = None) -> Array:
        """G x + d (the gradient below eq. 10)."""
        return (self.apply_G(X) if GX is None else GX) + self.linear

    def value(self, X: Array) -> Array:
        """phi(X) of eq. 9 (without the constant c of eq. 7)."""
        return 0.5 * jnp.sum(X * self.apply_G(X)) + jnp.sum(self.linear * X)

    def diagonal(self) -> Float[Array, "p k"]:
        """diag(G) in matrix form: the curvature of each coordinate."""
        p, k = self.linear.shape
        dt = self.linear.dtype
        out = self.row_weight.diagonal(p, dt)[:, None] * jnp.diagonal(self.gram)[None, :]
        for row, col in self.penalties:
            out = out + row.diagonal(p, dt)[:, None] * col.diagonal(k, dt)[None, :]
        return out


def half_problem_L(problem: Problem, L: Array, R: Array) -> HalfProblem:
    """The subproblem in L with R fixed (eq. 6 with X = L)."""
    RW = problem.W_0C.right(R)
    return HalfProblem(
        gram=R @ RW.T,
        row_weight=problem.W_0R,
        linear=problem.W_1L - (R @ problem.Ywt).T,
        penalties=problem.l2_L,
    )


def half_problem_R(problem: Problem, L: Array, R: Array) -> HalfProblem:
    """The subproblem in R with L fixed, posed on the transposed unknown X = R'.

    (R is not needed to build it; the argument keeps the signature symmetric.)
    """
    del R
    WL = problem.W_0R.left(L)
    linear = jnp.broadcast_to(problem.W_1R, (L.shape[1], problem.Y.shape[1])) - L.T @ problem.Yw
    return HalfProblem(
        gram=WL.T @ L,
        row_weight=problem.W_0C,
        linear=linear.T,
        penalties=tuple((col, row) for row, col in problem.l2_R),
    )


def objective_after_R_step(problem: Problem, hp_R: HalfProblem, L: Array, Rt: Array) -> Array:
    """eq. 3 at (L, R) reusing the R half problem built from this L.

    eq. 3 = phi_R(R') + 1/2 tr(Y' W_0R Y W_0C) + (L's penalty terms); phi_R needs only
    O(n k^2) work, so rules report the objective every iteration almost for free.
    In float32 this loses ~1e-7 of ||Y||^2 to cancellation, which is why the final
    objective of a fit is recomputed from the residual.
    """
    return hp_R.value(Rt) + problem.half_data_norm + penalty_value(problem.W_1L, problem.l2_L, L)


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
