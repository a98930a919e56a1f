"""The regularized, weighted NMF problem of Pav (2024), eq. 3 (layer 1).

    min_{L>=0, R>=0}  1/2 tr((Y - LR)' W_0R (Y - LR) W_0C)
                      + tr(W_1L' L) + tr(W_1R' R)
                      + 1/2 sum_j tr(L' W_2RL_j L W_2CL_j)
                      + 1/2 sum_j tr(R' W_2RR_j R W_2CR_j)

Every number a user may sweep (lambdas, gammas, weights) is an array leaf of
:class:`Problem`, so ``jax.vmap`` over it needs no special handling.  The scalar
form of eq. 4 is :meth:`Problem.from_scalars`; it maps

    lambda_2 -> the pair (lambda_2 I, I)   and   gamma_2 -> the pair (I, gamma_2 (11' - I)).

For R the non-orthogonality matrix is ``c x c`` (it acts on the columns of R), exactly
as in the reference package rnnmf.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .weights import Weight

PenaltyPairs = tuple[tuple[Weight, Weight], ...]


def pair_quadratic(pairs: PenaltyPairs, X: Array) -> Array:
    """sum_j W_R,j X W_C,j, the gradient of 1/2 sum_j tr(X' W_R,j X W_C,j)."""
    out = jnp.zeros_like(X)
    for row, col in pairs:
        out = out + row.left(col.right(X))
    return out


def penalty_value(W_1: Array, pairs: PenaltyPairs, X: Array) -> Array:
    """tr(W_1' X) + 1/2 sum_j tr(X' W_R,j X W_C,j)  (the penalty part of eq. 3)."""
    return jnp.sum(W_1 * X) + 0.5 * jnp.sum(X * pair_quadratic(pairs, X))


class Problem(eqx.Module):
    """Data, weights and penalties of eq. 3 (all numeric fields are array leaves).

    Attributes:
        Y: the ``m x n`` non-negative data.
        W_0R, W_0C: row (``m x m``) and column (``n x n``) weights of the loss.
        W_1L, W_1R: L1 weights, a scalar (times the all-ones matrix) or ``m x k`` /
            ``k x n`` matrices.
        l2_L, l2_R: the J pairs ``(W_2R_j, W_2C_j)`` of the L2 terms for L and R.
        Yw: ``W_0R Y W_0C``, precomputed (it is all the algorithms ever need of Y).
        Ywt: its transpose, stored contiguously: the L step's product ``R Yw'`` and the
            R step's ``L' Yw`` are then both "short-wide times tall" GEMMs, about 1.6x
            faster on CPU than products against a transposed operand.
        half_data_norm: ``1/2 tr(Y' W_0R Y W_0C)``, the constant of eq. 7.
    """

    Y: Float[Array, "m n"]
    W_0R: Weight
    W_0C: Weight
    W_1L: Array
    W_1R: Array
    l2_L: PenaltyPairs
    l2_R: PenaltyPairs
    Yw: Float[Array, "m n"]
    Ywt: Float[Array, "n m"]
    half_data_norm: Array

    def __init__(self, Y, W_0R=None, W_0C=None, W_1L=0.0, W_1R=0.0, l2_L=(), l2_R=()):
        Y = jnp.asarray(Y)
        self.Y = Y
        self.W_0R = Weight.from_user(W_0R)
        self.W_0C = Weight.from_user(W_0C)
        self.W_1L = jnp.asarray(W_1L, Y.dtype)
        self.W_1R = jnp.asarray(W_1R, Y.dtype)
        self.l2_L = tuple(l2_L)
        self.l2_R = tuple(l2_R)
        self.Yw = self.W_0R.left(self.W_0C.right(Y))
        self.Ywt = self.Yw.T  # eagerly, a contiguous copy
        self.half_data_norm = 0.5 * jnp.sum(Y * self.Yw)

    @staticmethod
    def from_scalars(
        Y,
        W_0R=None,
        W_0C=None,
        lambda_1L=0.0,
        lambda_1R=0.0,
        lambda_2L=0.0,
        lambda_2R=0.0,
        gamma_2L=0.0,
        gamma_2R=0.0,
    ) -> Problem:
        """The reduced form of eq. 4 (J = 2: ridge and non-orthogonality)."""
        dt = jnp.asarray(Y).dtype

        def pairs(lam2, gam2):
            return (
                (Weight.scalar(jnp.asarray(lam2, dt)), Weight.identity()),
                (Weight.identity(), Weight.offdiag(jnp.asarray(gam2, dt))),
            )

        return Problem(
            Y,
            W_0R,
            W_0C,
            W_1L=lambda_1L,
            W_1R=lambda_1R,
            l2_L=pairs(lambda_2L, gamma_2L),
            l2_R=pairs(lambda_2R, gamma_2R),
        )

    # ----------------------------------------------------------------- eq. 3
    def loss(self, L: Array, R: Array) -> Array:
        """1/2 tr((Y - LR)' W_0R (Y - LR) W_0C), the weighted Frobenius loss.

        Computed from the residual (m x n, never m x n x k), which keeps full
        precision when the fit is nearly exact.
        """
        E = self.Y - L @ R
        return 0.5 * jnp.sum(E * self.W_0R.left(self.W_0C.right(E)))

    def objective(self, L: Float[Array, "m k"], R: Float[Array, "k n"]) -> Array:
        """The objective of eq. 3."""
        return (
            self.loss(L, R) + penalty_value(self.W_1L, self.l2_L, L) + penalty_value(self.W_1R, self.l2_R, R)
        )

    def gradients(self, L: Array, R: Array) -> tuple[Array, Array]:
        """Analytic gradients of eq. 3 with respect to L and R.

        dL = W_0R L R W_0C R' - W_0R Y W_0C R' + W_1L + sum_j W_2RL_j L W_2CL_j
        dR = L' W_0R L R W_0C - L' W_0R Y W_0C + W_1R + sum_j W_2RR_j R W_2CR_j
        (the matrix form of G x + d, eqs. 8-9, for each half step).
        """
        WL = self.W_0R.left(L)
        RW = self.W_0C.right(R)
        gL = WL @ (R @ RW.T) - (R @ self.Ywt).T + self.W_1L + pair_quadratic(self.l2_L, L)
        gR = (WL.T @ L) @ RW - L.T @ self.Yw + self.W_1R + pair_quadratic(self.l2_R, R)
        return gL, gR
