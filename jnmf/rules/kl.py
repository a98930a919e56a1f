"""KL-divergence NMF: the multiplicative update of Lee & Seung (2001), with the column
normalization of the DAMC lecture notes (Xiamen University 2022, "algorithm II").

With our naming ``Y ~ L R`` (the ``X ~ W H`` of the DAMC notes, ``L = W``, ``R = H``) the rule
minimizes the generalized Kullback-Leibler divergence

    D(Y || LR) = sum_ij  Y_ij log(Y_ij / (LR)_ij) - Y_ij + (LR)_ij      (0 log 0 = 0)

plus the penalty terms of Pav (2024), eq. 3, by the updates

    L <- L (.) ((Y (/) LR) R') (/) (1 R' + W_1L)
    R <- R (.) (L' (Y (/) LR)) (/) (L' 1 + W_1R).

Each is the exact minimizer of the Lee-Seung auxiliary function (a majorizer of
the objective in that factor, tight at the current iterate), so the objective
never increases.  The L1 terms ``tr(W_1L' L)``, ``tr(W_1R' R)`` are linear and enter the
denominators unchanged.

Supported beyond Lee & Seung (all exact majorize-minimize steps, so monotone):

* ``W_1L`` / ``W_1R``: scalars or full ``m x k`` / ``k x n`` matrices.
* The L2 terms of eq. 3 (ridge ``lambda_2``, non-orthogonality ``gamma_2`` and general
  pairs), provided their weights are elementwise non-negative (eq. 3 assumes so).
  For ``1/2 x' A x`` with ``A >= 0`` elementwise, ``1/2 sum_i (A x0)_i / x0_i x_i^2`` majorizes
  it (Lee & Seung's lemma), so each element minimizes
  ``q / (2 x0) x^2 + b x - x0 num log x`` (b the denominator above, num the numerator,
  ``q = (sum_j W_R,j X0 W_C,j)`` elementwise), whose minimizer is
  ``x = 2 x0 num / (b + sqrt(b^2 + 4 q num))``; with no L2 term, the plain update.
* ``W_0R`` / ``W_0C`` of kinds identity, scalar or diagonal, as the elementwise
  weights ``w_i v_j`` of ``sum_ij w_i v_j D_ij`` (the weighted data are then ``w_i Y_ij v_j``).
* An elementwise weight ``M`` (missing values: ``M_ij = 0``), the divergence
  ``sum_ij M_ij D_ij``: the updates become ``L <- L (.) ((M (.) Y (/) LR) R') (/) (M R' + W_1L)``
  and likewise for R (the same majorization, entry by entry).

Not supported: ``full`` or ``offdiag`` ``W_0R`` / ``W_0C`` (a weighted KL divergence has
no meaning for a non-diagonal weight): :meth:`KLMU.check` rejects them.

Where this rule differs from the protocol's default (jnmf/rules/base.py): its
objective is not eq. 3, so its half problem is not eq. 8's ``(G, d)`` but
:class:`KLHalfProblem` (the Lee-Seung numerator and denominator of the free
factor), and ``NMFState.aux`` is empty outside the driver's loop.  Inside it
(:meth:`KLMU.in_loop`) ``aux`` carries ``L R`` at the current factors, formed once per
iteration at its end and shared by the objective (which the driver evaluates only where
it is used, :meth:`KLMU.costly_objective`, but by default at every iteration: the
history and the ``tol`` test) and the next L half step's quotient; the R half step forms
its own at the new L.  Without the carried product an iteration whose objective is
needed formed ``L R`` three times (experiments/README.md, "bench_bound.py").  It is
dropped when the loop ends, so results hold no ``m x n`` array per fit; but a batched loop
carries one per fit it holds (``"vmap"`` through slots: one per fit of the batch, in the
slots' buffer), next to the quotients the batched step forms anyway.

Column normalization (unit 1-norm columns of L, as in the DAMC notes) is the driver option
``normalize="sum"`` of :func:`jnmf.driver.iterate`; without penalties it leaves the
iterates' product, hence the objective history, unchanged (the update is equivariant
under ``L -> L D, R -> D^-1 R``).  With penalties it changes the problem (they are not
scale invariant), as with every rule.

Guards: the quotient is ``Y (/) max(LR, epsilon)``, so zero rows and columns of Y, and
vanished columns of a factor, give no NaN; an element on which the objective does
not depend (its partner column or row has vanished and it carries no penalty) is
left unchanged.
The order is L then R (the DAMC notes update H = R first; the two orders differ
only by half a step), matching the other rules of jnmf.  L is kept factor-major
(``Lt = L'``) as in every rule.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array

from ..problem import Problem
from ..weights import Weight
from .base import AlternatingRule, HalfStep, NMFState, as_setting, unsupported

_DIAGONAL_KINDS = ("identity", "scalar", "diag")


def kl_supported(problem: Problem) -> bool:
    """Whether :class:`KLMU` minimizes exactly the stated problem (loss weights diagonal)."""
    return problem.W_0R.kind in _DIAGONAL_KINDS and problem.W_0C.kind in _DIAGONAL_KINDS


def diagonal_loss_weights(problem: Problem, dtype) -> tuple[Array, Array]:
    """The diagonals of W_0R and W_0C: the elementwise weights ``w_i v_j`` of a divergence."""
    m, n = problem.shape
    return problem.W_0R.diagonal(m, dtype), problem.W_0C.diagonal(n, dtype)


def loss_weight_matrix(problem: Problem, dtype) -> Array:
    """The elementwise weights of a divergence at the data's stored entries (``m x n`` for
    dense data): ``M_ij w_i v_j`` (M = 1 without an elementwise weight)."""
    w, v = diagonal_loss_weights(problem, dtype)
    return problem.data.entry_weights(w, v).astype(dtype)


def kl_divergence(
    Y: Array,
    LR: Array,
    epsilon: float | Array = 0.0,
    row_weight: Array | None = None,
    col_weight: Array | None = None,
    weight: Array | None = None,
) -> Array:
    """Generalized KL divergence ``sum w_i v_j (Y log(Y / LR) - Y + LR)`` (Lee & Seung 2001).

    ``0 log 0 = 0``.  ``LR`` is clamped below at ``epsilon`` inside the logarithm (as
    in the update), so the value is finite wherever the update is; with
    ``epsilon = 0`` an entry with ``LR = 0 < Y`` gives ``+inf``, the exact value.
    ``row_weight`` (m) and ``col_weight`` (n) are optional row and column weights,
    ``weight`` (``m x n``) an optional elementwise one.
    """
    P = jnp.maximum(LR, epsilon)
    D = xlogy(Y, jnp.where(Y > 0, Y / P, 1.0)) - Y + LR
    if weight is not None:
        D = weight * D
    if row_weight is not None:
        D = row_weight[:, None] * D
    if col_weight is not None:
        D = D * col_weight[None, :]
    return jnp.sum(D)


def kl_objective(
    problem: Problem, L: Array, R: Array, LR: Array | None = None, epsilon: float | Array = 0.0
) -> Array:
    """The objective KLMU decreases: weighted ``D(Y || LR)`` plus the penalty terms of eq. 3.

    Evaluated at the data's stored entries (``LR`` there, or sampled from L, R): for sparse
    data with unstored zeros, those entries add only ``(LR)_ij``, whose weighted sum over
    all entries is ``(w' L)(R v)``.
    """
    data = problem.data
    w, v = diagonal_loss_weights(problem, L.dtype)
    weights = data.entry_weights(w, v)
    Y = data.stored()
    LR = data.sampled(L.T, R) if LR is None else LR
    P = jnp.maximum(LR, epsilon)
    D = xlogy(Y, jnp.where(Y > 0, Y / P, 1.0)) - Y
    if data.unstored_zero:
        loss = jnp.sum(weights * D) + (w @ L) @ (R @ v)
    else:
        loss = jnp.sum(weights * (D + LR))
    return loss + problem.penalty_L.value(L) + problem.penalty_R.value(R)


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


class KLHalfProblem(eqx.Module):
    """The subproblem of one factor for a multiplicative divergence update, factor-major
    (``Xt`` is ``k x p``); the beta-divergence rule (jnmf.rules.beta) uses it too.

    Attributes:
        numerator: the update's numerator; for KL the Lee-Seung ``F (Yw (/) max(LR, eps))``
            in ``k x p`` layout (F the fixed factor).
        denominator: the update's denominator; for KL the linear coefficient
            ``(F v) w' + W_1`` (``k x p``; w, v the diagonal loss weights of the free and
            fixed side).
        penalties: the L2 pairs as (k-side, p-side) weights.
    """

    numerator: Array
    denominator: Array
    penalties: tuple[tuple[Weight, Weight], ...]

    def quadratic(self, Xt: Array) -> Array:
        """sum_j B_j Xt A_j: the gradient of the L2 terms, factor-major."""
        out = jnp.zeros_like(Xt)
        for k_side, p_side in self.penalties:
            out = out + k_side.left(p_side.right(Xt))
        return out


class KLMU(AlternatingRule):
    """Lee-Seung multiplicative update for the KL divergence (Lee & Seung 2001).

    ``epsilon`` is the floor of ``LR`` in the quotient ``Y / LR`` (absolute units of Y;
    ``fit`` scales Y to a maximum near 1 first, so there it is relative).  The objective
    reported in ``StepInfo`` and by :meth:`objective` is :func:`kl_objective`, not eq. 3.
    See the module docstring for the supported penalties and weights.
    """

    method_name: ClassVar[str] = "kl"
    epsilon: Array

    def __init__(self, epsilon=1e-10):
        self.epsilon = as_setting(epsilon)

    @property
    def loss_degree(self) -> float:
        """The KL divergence is homogeneous of degree 1 in ``(Y, LR)``."""
        return 1.0

    def check(self, problem: Problem) -> None:
        if not kl_supported(problem):
            raise unsupported(self, "full or non-orthogonality W_0R / W_0C (only diagonal loss weights)")

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> None:
        # Outside the driver's loop the state holds the factors only (see in_loop).
        return None

    def in_loop(self, problem: Problem, state: NMFState) -> NMFState:
        """The state with ``aux = L R`` at its factors (at the data's stored entries), as
        the driver's loop carries it (also after rescaling: the same product, re-formed
        from the rescaled factors so the iterates do not change by a rounding)."""
        return NMFState(state.Lt, state.R, problem.data.sampled(state.Lt, state.R))

    def out_of_loop(self, state: NMFState) -> NMFState:
        """The state without the carried ``L R``."""
        return NMFState(state.Lt, state.R, None)

    def costly_objective(self, problem: Problem) -> bool:
        """The divergence needs a logarithm or power of every entry of LR: about as much as
        the rest of an iteration, so the driver evaluates it only where needed."""
        return True

    def objective(self, problem: Problem, state) -> Array:
        eps = self.epsilon.astype(state.R.dtype)
        return kl_objective(problem, state.Lt.T, state.R, state.aux, eps)  # aux: L R, or None

    def half_problem(self, problem: Problem, side: str, Lt: Array, R: Array, aux) -> KLHalfProblem:
        eps = self.epsilon.astype(R.dtype)
        data = problem.data
        w, v = diagonal_loss_weights(problem, R.dtype)
        weights = data.entry_weights(w, v)  # M_ij w_i v_j at the stored entries
        # the quotient Yw / max(LR, eps), stored where Y is (at the current factors: the
        # new L in the R step; the L step's L R is the one the loop carries, if any)
        LR = aux if side == "L" and aux is not None else data.sampled(Lt, R)
        quotient = data.with_stored(weights * data.stored() / jnp.maximum(LR, eps))
        if side == "L":
            # num' = R (Yw / LR)',  den' = (R v) w' + W_1L'
            numerator = quotient.product_L(R)
            W_1 = problem.penalty_L.l1()
            if data.masked:
                weight_sums = data.with_stored(weights).product_L(R)
            else:
                weight_sums = (R @ v)[:, None] * w[None, :]
            denominator = weight_sums + (W_1.T if W_1.ndim == 2 else W_1)
            pairs = tuple((col, row) for row, col in problem.penalty_L.pairs())
        else:
            # num = L' (Yw / LR),  den = (L' w) v' + W_1R
            numerator = quotient.product_R(Lt)
            if data.masked:
                weight_sums = data.with_stored(weights).product_R(Lt)
            else:
                weight_sums = (Lt @ w)[:, None] * v[None, :]
            denominator = weight_sums + problem.penalty_R.l1()
            pairs = problem.penalty_R.pairs()
        return KLHalfProblem(numerator, denominator, pairs)

    def half_step(self, hp: KLHalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        return HalfStep(kl_mm_update(Xt, hp.numerator, hp.denominator, hp.quadratic(Xt)), aux)

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, aux):
        eps = self.epsilon.astype(R.dtype)
        LR = problem.data.sampled(Lt, R)  # the product at the new iterate
        # carried to the next iteration when the loop carries one (aux not None)
        return Lt, R, None if aux is None else LR, kl_objective(problem, Lt.T, R, LR, eps)
