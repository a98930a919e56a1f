"""Beta-divergence NMF: the multiplicative update of Févotte & Idier (2011), with penalties.

With our naming ``Y ~ L R`` the rule minimizes

    D_beta(Y || LR) + tr(W_1L' L) + tr(W_1R' R) + (the L2 terms of eq. 3)

where ``D_beta = sum_ij w_i v_j d_beta(Y_ij | (LR)_ij)`` (``w``, ``v`` the diagonal loss
weights ``W_0R``, ``W_0C``; none by default; or ``M_ij`` with an elementwise weight M,
0 for a missing entry) and, for ``y, x > 0``,

    d_beta(y | x) = (y^beta + (beta - 1) x^beta - beta y x^(beta - 1)) / (beta (beta - 1))
    d_1(y | x)    = y log(y / x) - y + x              (generalized Kullback-Leibler)
    d_0(y | x)    = y / x - log(y / x) - 1            (Itakura-Saito)

(beta = 2 is half the squared Frobenius distance, eq. 3's loss).  The update of
Févotte & Idier (2011), "Algorithms for nonnegative matrix factorization with the
beta-divergence", Neural Computation 23(9), is their majorize-minimize (MM) algorithm

    L <- L (.) (((Y (.) P^(beta-2)) R') (/) (P^(beta-1) R' + W_1L + Q_L(L)))^gamma(beta)

(and the same for R, at the new L), with ``P = max(LR, epsilon)``, the exponent

    gamma(beta) = 1 / (2 - beta)  for beta < 1,   1  for 1 <= beta <= 2,   1 / (beta - 1)  for beta > 2,

and ``Q_L(L) = sum_j W_2RL_j L W_2CL_j`` the gradient of the L2 terms (``lambda_2L L`` for
the ridge).  Without penalties each half step minimizes Févotte & Idier's auxiliary
function, so the objective never increases (Févotte & Idier 2011; with gamma = 1 it is the
Lee & Seung (2001) heuristic, which is an MM step exactly for 1 <= beta <= 2).

Penalties: the L1 terms enter the denominator unchanged; that is again an exact MM step
for every beta (a linear term is majorized by the power form of the auxiliary function
for any exponent >= 1).  The L2 terms enter the denominator as their gradient at the
current iterate (scikit-learn does the same for its ridge); that is an exact MM step for
beta >= 2 (and non-negative L2 weights), and the usual heuristic otherwise: for
beta < 2 with L2 terms monotonicity is observed, not proven (for beta = 1 use
:class:`~jnmf.rules.kl.KLMU`, whose L2 handling is exact).

Numerics (the same guards as :class:`~jnmf.rules.kl.KLMU` and scikit-learn's solver):

* ``LR`` is floored at ``epsilon`` wherever it is raised to a power or divided by;
* an element whose denominator is zero (its partner row/column of the other factor
  vanished and it carries no penalty: the objective does not depend on it) is left
  unchanged;
* for ``beta <= 0`` the divergence is infinite at ``Y_ij = 0``, so the rule works on
  ``max(Y, epsilon)`` there (in the objective and the update alike; scikit-learn asks
  the user to add a small value to such data);
* ``beta`` is an array leaf: changing it never recompiles (the exponent and the special
  cases are chosen with ``jnp.where``).

``NMFState.aux`` is empty (as for KLMU): each half step forms ``L R`` itself.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array

from .._validate import is_traced
from ..problem import Problem
from .base import AlternatingRule, HalfStep, as_setting, unsupported
from .kl import KLHalfProblem, kl_supported, loss_weight_matrix


def mm_exponent(beta: Array) -> Array:
    """The exponent gamma(beta) of Févotte & Idier's (2011) MM update:
    ``1/(2 - beta)`` for beta < 1, 1 for 1 <= beta <= 2, ``1/(beta - 1)`` for beta > 2."""
    beta = jnp.asarray(beta)
    below = 1.0 / jnp.where(beta < 1, 2.0 - beta, 1.0)
    above = 1.0 / jnp.where(beta > 2, beta - 1.0, 1.0)
    return jnp.where(beta < 1, below, jnp.where(beta > 2, above, 1.0))


def effective_data(Y: Array, beta: Array, epsilon: Array) -> Array:
    """The data the rule fits: ``Y``, floored at ``epsilon`` where ``beta <= 0`` (there
    ``d_beta(0 | x)`` is infinite).  NaN stays NaN."""
    return jnp.where(beta <= 0, jnp.maximum(Y, epsilon), Y)


def beta_divergence(
    Y: Array,
    LR: Array,
    beta: Array,
    epsilon: float | Array = 0.0,
    row_weight: Array | None = None,
    col_weight: Array | None = None,
    weight: Array | None = None,
) -> Array:
    """``sum_ij w_i v_j d_beta(Y_ij | (LR)_ij)`` (the beta-divergence of Févotte & Idier 2011).

    Args:
        Y: the data (``m x n``, non-negative; for ``beta <= 0`` pass positive data, e.g.
            :func:`effective_data`).
        LR: the model, floored at ``epsilon`` before any power, logarithm or division.
        beta: the divergence parameter (any real; may be traced).
        epsilon: the floor of ``LR``.
        row_weight, col_weight: optional row and column weights ``w`` (m) and ``v`` (n).
        weight: an optional elementwise weight (``m x n``; 0 drops an entry).

    Returns:
        The scalar divergence: half the squared Frobenius distance for beta = 2, the
        generalized KL divergence for 1, Itakura-Saito for 0 (``0 log 0 = 0``; entries
        with ``Y = 0`` contribute ``x^beta / beta`` for beta > 0).
    """
    beta = jnp.asarray(beta, LR.dtype)
    X = jnp.maximum(LR, epsilon)
    positive = Y > 0
    # beta = 1: y log(y/x) - y + x
    kl = xlogy(Y, jnp.where(positive, Y / X, 1.0)) - Y + X
    # beta = 0: y/x - log(y/x) - 1 (Y > 0 here by effective_data)
    ratio = jnp.where(positive, Y / X, 1.0)
    itakura_saito = ratio - jnp.log(ratio) - 1.0
    # beta = 2: (y - x)^2 / 2 (from LR itself, so an exact fit gives exactly 0)
    half_square = 0.5 * (Y - LR) ** 2
    # general beta
    safe_beta = jnp.where((beta == 0) | (beta == 1), 0.5, beta)
    y_pow = jnp.where(positive, jnp.power(jnp.where(positive, Y, 1.0), safe_beta), 0.0)
    cross = jnp.where(positive, Y * jnp.power(X, safe_beta - 1.0), 0.0)
    general = (y_pow + (safe_beta - 1.0) * jnp.power(X, safe_beta) - safe_beta * cross) / (
        safe_beta * (safe_beta - 1.0)
    )
    general = jnp.where(jnp.isnan(Y), Y, general)  # NaN data gives a NaN objective
    D = jnp.where(
        beta == 2, half_square, jnp.where(beta == 1, kl, jnp.where(beta == 0, itakura_saito, general))
    )
    if weight is not None:
        D = weight * D
    if row_weight is not None:
        D = row_weight[:, None] * D
    if col_weight is not None:
        D = D * col_weight[None, :]
    return jnp.sum(D)


def beta_objective(
    problem: Problem, L: Array, R: Array, beta, LR: Array | None = None, epsilon: float | Array = 0.0
) -> Array:
    """The objective BetaMU decreases: weighted ``D_beta(Y || LR)`` plus the penalties of eq. 3.

    For ``beta <= 0`` the data are floored at ``epsilon`` (:func:`effective_data`).
    """
    LR = problem.data.sampled(L.T, R) if LR is None else LR
    weights = loss_weight_matrix(problem, L.dtype)
    eps = jnp.asarray(epsilon, L.dtype)
    Y = effective_data(problem.data.stored(), jnp.asarray(beta, L.dtype), eps)
    loss = beta_divergence(Y, LR, beta, eps, weight=weights)
    return loss + problem.penalty_L.value(L) + problem.penalty_R.value(R)


# The half problem of a beta-divergence step has the shape of KL's: numerator
# ``F (W (.) Y (.) P^(beta-2))``, denominator ``F (W (.) P^(beta-1)) + W_1`` (``k x p``;
# F the fixed factor, W the loss weights ``w_i v_j``, P the floored model), L2 pairs.
BetaHalfProblem = KLHalfProblem


def beta_mu_update(X: Array, numerator: Array, denominator: Array, exponent: Array) -> Array:
    """``X (.) (numerator / denominator)^exponent``, elementwise; elements with a zero
    denominator (the objective does not depend on them) are left unchanged."""
    ok = denominator > 0
    ratio = numerator / jnp.where(ok, denominator, 1.0)
    return jnp.where(ok, X * jnp.power(ratio, exponent), X)


class BetaMU(AlternatingRule):
    """Multiplicative update for the beta-divergence (Févotte & Idier 2011; Lee & Seung 2001).

    Args:
        beta: the divergence parameter, any real (2: Frobenius, 1: Kullback-Leibler,
            0: Itakura-Saito); an array leaf, so new values never recompile.
        epsilon: the floor of ``LR`` (and of ``Y`` where ``beta <= 0``), in absolute units
            of Y (``fit`` scales Y to a maximum of 1 first, so there it is relative).

    The objective reported in ``StepInfo`` and by :meth:`objective` is
    :func:`beta_objective`.  Supports diagonal ``W_0R`` / ``W_0C``, L1 weights, and L2 terms
    with non-negative weights (ridge, non-orthogonality, general pairs); see the module
    docstring for which combinations are exact MM steps.
    """

    method_name: ClassVar[str] = "beta"
    beta: Array
    epsilon: Array

    def __init__(self, beta=1.5, epsilon=1e-10):
        if not is_traced(beta):
            b = np.asarray(beta)
            if b.shape != () or not np.isfinite(b) or b.dtype.kind not in "iuf":
                raise ValueError(f"beta must be a finite real scalar, got {beta!r}")
        self.beta = as_setting(beta, float)
        self.epsilon = as_setting(epsilon)

    @property
    def loss_degree(self) -> float:
        """``d_beta(c y | c x) = c^beta d_beta(y | x)``: the loss has degree beta."""
        return float(self.beta)

    def check(self, problem: Problem) -> None:
        if not kl_supported(problem):
            raise unsupported(self, "full or non-orthogonality W_0R / W_0C (only diagonal loss weights)")
        if problem.data.unstored_zero:
            raise unsupported(
                self,
                "sparse data with unstored zeros: its update needs (LR)^(beta-1) at every entry, "
                "an m x n pass; use method='kl' (beta=1), a Frobenius method (beta=2), dense data, "
                "or missing='unstored'",
            )

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> None:
        # No state between iterations: each half step forms L R itself.  (Carrying the
        # product from the end of one iteration to the next would cost one more m x n x k
        # product whenever the driver does not need the objective.)
        return None

    def costly_objective(self, problem: Problem) -> bool:
        """The divergence needs a logarithm or power of every entry of LR: about as much as
        the rest of an iteration, so the driver evaluates it only where needed."""
        return True

    def objective(self, problem: Problem, state) -> Array:
        dt = state.R.dtype
        return beta_objective(
            problem, state.Lt.T, state.R, self.beta.astype(dt), None, self.epsilon.astype(dt)
        )

    def half_problem(self, problem: Problem, side: str, Lt: Array, R: Array, aux) -> BetaHalfProblem:
        dt = R.dtype
        beta, eps = self.beta.astype(dt), self.epsilon.astype(dt)
        data = problem.data
        P = jnp.maximum(data.sampled(Lt, R), eps)  # at the current factors (the new L in the R step)
        Y = effective_data(data.stored(), beta, eps)
        weights = loss_weight_matrix(problem, dt)
        # Y P^(beta-2) only where Y > 0 (P^(beta-2) may overflow where Y = 0 and beta < 2)
        scaled_data = data.with_stored(
            jnp.where(Y > 0, weights * Y * jnp.power(P, beta - 2.0), jnp.where(Y == 0, 0.0, Y))
        )
        model_term = data.with_stored(weights * jnp.power(P, beta - 1.0))
        if side == "L":
            numerator = scaled_data.product_L(R)
            W_1 = problem.penalty_L.l1()
            denominator = model_term.product_L(R) + (W_1.T if W_1.ndim == 2 else W_1)
            pairs = tuple((col, row) for row, col in problem.penalty_L.pairs())
        else:
            numerator = scaled_data.product_R(Lt)
            denominator = model_term.product_R(Lt) + problem.penalty_R.l1()
            pairs = problem.penalty_R.pairs()
        return BetaHalfProblem(numerator, denominator, pairs)

    def half_step(self, hp: BetaHalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        exponent = mm_exponent(self.beta.astype(Xt.dtype))
        denominator = hp.denominator + hp.quadratic(Xt)
        return HalfStep(beta_mu_update(Xt, hp.numerator, denominator, exponent), aux)

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, aux):
        dt = R.dtype
        objective = beta_objective(problem, Lt.T, R, self.beta.astype(dt), None, self.epsilon.astype(dt))
        return Lt, R, aux, objective
