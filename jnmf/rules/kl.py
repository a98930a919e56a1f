"""KL-divergence NMF: the multiplicative update of Lee & Seung (seed 001, "algorithm II").

With our naming ``Y ~ L R`` (the lecture's ``X ~ W H``, ``L = W``, ``R = H``) the rule
minimizes the generalized Kullback-Leibler divergence (seed 001, section 4)

    D(Y || LR) = sum_ij  Y_ij log(Y_ij / (LR)_ij) - Y_ij + (LR)_ij      (0 log 0 = 0)

plus the penalty terms of Pav (2024), eq. 3, by the updates

    L <- L (.) ((Y (/) LR) R') (/) (1 R' + W_1L)
    R <- R (.) (L' (Y (/) LR)) (/) (L' 1 + W_1R).

Each is the exact minimizer of the Lee-Seung auxiliary function (a majorizer of
the objective in that factor, tight at the current iterate), so the objective
never increases.  The L1 terms ``tr(W_1L' L)``, ``tr(W_1R' R)`` are linear and enter the
denominators unchanged.

Supported beyond the lecture (all exact majorize-minimize steps, so monotone):

* ``W_1L`` / ``W_1R``: scalars or full ``m x k`` / ``k x n`` matrices.
* The L2 terms of eq. 3 (ridge ``lambda_2``, non-orthogonality ``gamma_2`` and general
  pairs), provided their weights are elementwise non-negative (eq. 3 assumes so).
  For ``1/2 x' A x`` with ``A >= 0`` elementwise, ``1/2 sum_i (A x0)_i / x0_i x_i^2`` majorizes
  it (Lee & Seung's lemma), so each element minimizes
  ``q / (2 x0) x^2 + b x - x0 num log x`` (b the denominator above, num the numerator,
  ``q = (sum_j W_R,j X0 W_C,j)`` elementwise), whose minimizer is
  ``x = 2 x0 num / (b + sqrt(b^2 + 4 q num))``; with no L2 term, the plain update.
* ``W_0R`` / ``W_0C`` of kinds identity, scalar or diagonal, as the elementwise
  weights ``w_i v_j`` of ``sum_ij w_i v_j D_ij`` (``problem.Yw = W_0R Y W_0C`` is then ``w_i Y_ij v_j``).

Not supported: ``full`` or ``offdiag`` ``W_0R`` / ``W_0C`` (a weighted KL divergence has
no meaning for a non-diagonal weight); the rule would mix ``problem.Yw`` with the
weights' diagonals and minimize nothing meaningful.  Nothing is raised at trace time;
front doors should validate with :func:`kl_supported` (weight kinds are static).

Column normalization (the lecture's unit 1-norm columns of L) is the driver option
``normalize="sum"`` of :func:`jnmf.driver.iterate`; without penalties it leaves the
iterates' product, hence the objective history, unchanged (the update is equivariant
under ``L -> L D, R -> D^-1 R``).  With penalties it changes the problem (they are not
scale invariant), as with every rule.

Guards: the quotient is ``Y (/) max(LR, epsilon)``, so zero rows and columns of Y, and
vanished columns of a factor, give no NaN; an element on which the objective does
not depend (its partner column or row has vanished and it carries no penalty) is
left unchanged.
The order is L then R (the lecture updates H = R first; the two orders differ only
by half a step), matching the other rules of jnmf.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array

from .._fitwise import fitwise
from ..problem import Problem, pair_quadratic, penalty_value
from .base import Rule, StepInfo, as_setting, max_abs, rescale_rows

_DIAGONAL_KINDS = ("identity", "scalar", "diag")


def kl_supported(problem: Problem) -> bool:
    """Whether :class:`KLMU` minimizes exactly the stated problem (loss weights diagonal)."""
    return problem.W_0R.kind in _DIAGONAL_KINDS and problem.W_0C.kind in _DIAGONAL_KINDS


def _loss_weights(problem: Problem, dtype) -> tuple[Array, Array]:
    m, n = problem.Y.shape
    return problem.W_0R.diagonal(m, dtype), problem.W_0C.diagonal(n, dtype)


def kl_divergence(
    Y: Array,
    LR: Array,
    epsilon: float | Array = 0.0,
    row_weight: Array | None = None,
    col_weight: Array | None = None,
) -> Array:
    """Generalized KL divergence ``sum w_i v_j (Y log(Y / LR) - Y + LR)`` (seed 001, section 4).

    ``0 log 0 = 0``.  ``LR`` is clamped below at ``epsilon`` inside the logarithm (as
    in the update), so the value is finite wherever the update is; with
    ``epsilon = 0`` an entry with ``LR = 0 < Y`` gives ``+inf``, the exact value.
    ``row_weight`` (m) and ``col_weight`` (n) are optional elementwise weights.
    """
    P = jnp.maximum(LR, epsilon)
    D = xlogy(Y, jnp.where(Y > 0, Y / P, 1.0)) - Y + LR
    if row_weight is not None:
        D = row_weight[:, None] * D
    if col_weight is not None:
        D = D * col_weight[None, :]
    return jnp.sum(D)


def kl_objective(
    problem: Problem, L: Array, R: Array, LR: Array | None = None, epsilon: float | Array = 0.0
) -> Array:
    """The objective KLMU decreases: weighted ``D(Y || LR)`` plus the penalty terms of eq. 3."""
    LR = L @ R if LR is None else LR
    w, v = _loss_weights(problem, L.dtype)
    return (
        kl_divergence(problem.Y, LR, epsilon, w, v)
        + penalty_value(problem.W_1L, problem.l2_L, L)
        + penalty_value(problem.W_1R, problem.l2_R, R)
    )


def kl_mm_update(X: Array, numerator: Array, denominator: Array, quadratic: Array) -> Array:
    """Minimizer of the separable auxiliary function, elementwise.

    ``X`` the current factor, ``numerator`` the Lee-Seung numerator (e.g. ``(Y/LR) R'``),
    ``denominator`` the linear coefficient (``1 R' + W_1``), ``quadratic`` the L2
    gradient ``sum_j W_R,j X W_C,j`` at X (zero without L2 terms).  Returns
    ``2 X num / (b + sqrt(b^2 + 4 q num))``.  Where that denominator is zero (b = 0 and
    q num = 0) the auxiliary function is ``q x^2 / (2 X)``: its minimizer is 0 when q > 0,
    and when q = 0 too the objective does not depend on the element, which is left
    unchanged.
    """
    disc = jnp.sqrt(jnp.maximum(denominator * denominator + 4.0 * quadratic * numerator, 0.0))
    den = denominator + disc
    ok = den > 0
    stay = jnp.where(quadratic > 0, 0.0, X)
    return jnp.where(ok, 2.0 * X * numerator / jnp.where(ok, den, 1.0), stay)


class KLState(eqx.Module):
    """L, R and their product (carried so each step forms ``L R`` once per half step)."""

    L: Array
    R: Array
    LR: Array


class KLMU(Rule):
    """Lee-Seung multiplicative update for the KL divergence (seed 001, algorithm II).

    ``epsilon`` is the floor of ``LR`` in the quotient ``Y / LR`` (absolute units of Y;
    the default suits data of order 1e-6 and above in float32).  The objective
    reported in ``StepInfo`` and by :meth:`objective` is :func:`kl_objective`, not eq. 3.
    See the module docstring for the supported penalties and weights.
    """

    epsilon: Array

    def __init__(self, epsilon=1e-10):
        self.epsilon = as_setting(epsilon)

    def init(self, problem: Problem, L: Array, R: Array) -> KLState:
        return KLState(L, R, L @ R)

    # KL keeps L in its natural layout: its products are with Y / LR, not with Yw.
    def factors(self, state: KLState) -> tuple[Array, ...]:
        return (state.L, state.R)

    def result_factors(self, state: KLState) -> tuple[Array, ...]:
        return (state.L, state.R)

    def with_factors(self, state: KLState, factors: tuple[Array, ...]) -> KLState:
        L, R = factors
        return KLState(L, R, L @ R)

    def rescale(self, state: KLState, mode: str) -> KLState:
        Lt, R = rescale_rows(state.L.T, state.R, mode)
        return self.with_factors(state, (Lt.T, R))

    def objective(self, problem: Problem, state: KLState) -> Array:
        return kl_objective(problem, state.L, state.R, state.LR, self.epsilon.astype(state.L.dtype))

    def step(self, problem: Problem, state: KLState):
        # Every product here involves the fit's own m x n quotient Y / LR, so batching
        # fits shares no work and only multiplies the memory traffic: under vmap the
        # step runs fit by fit (jnmf._fitwise).
        return fitwise(lambda rule, problem, state: rule._step(problem, state))(self, problem, state)

    def _step(self, problem: Problem, state: KLState):
        L, R, P = state.L, state.R, state.LR
        eps = self.epsilon.astype(L.dtype)
        w, v = _loss_weights(problem, L.dtype)
        Yw = problem.Yw  # w_i Y_ij v_j for diagonal weights

        # L half step: num = (Yw / LR) R',  den = w (R v)' + W_1L.
        num = (Yw / jnp.maximum(P, eps)) @ R.T
        den = w[:, None] * (R @ v)[None, :] + problem.W_1L
        L_new = kl_mm_update(L, num, den, pair_quadratic(problem.l2_L, L))

        # R half step at the new L: num = L' (Yw / LR),  den = (w' L)' v' + W_1R.
        P = L_new @ R
        num = L_new.T @ (Yw / jnp.maximum(P, eps))
        den = (w @ L_new)[:, None] * v[None, :] + problem.W_1R
        R_new = kl_mm_update(R, num, den, pair_quadratic(problem.l2_R, R))

        P = L_new @ R_new
        info = StepInfo(
            steps=jnp.stack([max_abs(L_new - L), max_abs(R_new - R)]),
            objective=kl_objective(problem, L_new, R_new, P, eps),
            stuck=jnp.zeros((), bool),
        )
        return KLState(L_new, R_new, P), info
