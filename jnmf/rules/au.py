"""AURNMF / GAURNMF, the additive update of Pav (2024), Algorithms 2-3.

The Lee-Seung direction is used as the direction of an additive step whose
length is the exact minimizer along it (eq. 24), capped by a fraction tau_k of
the longest feasible step (Lemma 3.1), with ``tau_k`` annealed towards 1:
``tau_k = (1 - annealing_rate) tau_{k-1} + annealing_rate``.

Difference from rnnmf 0.3.0: in ``aurnmf`` rnnmf's K = G H (the curvature term of
eq. 24) omits the non-orthogonality term ``gamma (11' - I)``, so with gamma > 0 its
"optimal" step is not optimal and can overshoot.  Here K is the full ``G H``
(every quadratic term of the half-step objective), which is what ``gaurnmf``
already does; with gamma = 0 the iterates are identical to rnnmf's.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..problem import Problem
from ..quadratic import (
    HalfProblem,
    half_problem_L,
    half_problem_R,
    max_feasible_step,
    objective_after_R_step,
    optimal_step_length,
)
from .base import Rule, StepInfo, as_setting, max_abs


def pick_direction(X: Array, grad: Array, F: Array) -> Array:
    """PICK_DIRECTION of Algorithm 3: the Lee-Seung direction made safe.

    ``H = -grad (.) X (/) F`` with F = G X; where F <= 0 the division is by 1, and
    where X is zero the direction is ``max(-grad, 0)`` so a zero element can grow
    (the multiplicative update can never leave zero).
    """
    H = -grad * X / jnp.where(F <= 0, 1.0, F)
    return jnp.where(X <= 0, jnp.maximum(-grad, 0.0), H)


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


class AUState(eqx.Module):
    Lt: Array  # L', factor-major (see jnmf/quadratic.py)
    R: Array
    tau_k: Array

    @property
    def L(self) -> Array:
        return jnp.swapaxes(self.Lt, -1, -2)  # also right for a batch of states


class AURNMF(Rule):
    """Algorithm 3 on the general problem of eq. 3 (rnnmf's aurnmf and gaurnmf)."""

    tau: Array
    annealing_rate: Array
    zero_tolerance: Array
    check_optimal_step: bool = eqx.field(static=True)

    def __init__(self, tau=0.1, annealing_rate=0.01, check_optimal_step=True, zero_tolerance=1e-12):
        self.tau = as_setting(tau)
        self.annealing_rate = as_setting(annealing_rate)
        self.zero_tolerance = as_setting(zero_tolerance)
        self.check_optimal_step = bool(check_optimal_step)

    def init(self, problem: Problem, L: Array, R: Array) -> AUState:
        return AUState(L.T, R, self.tau.astype(L.dtype))

    def half_step(self, hp: HalfProblem, Xt: Array, tau_k: Array) -> tuple[Array, Array]:
        F = hp.apply_G(Xt)
        grad = F + hp.linear
        H = pick_direction(Xt, grad, F)
        GH = hp.apply_G(H) if self.check_optimal_step else None
        return giqpm_step(Xt, grad, H, GH, tau_k)

    def step(self, problem: Problem, state: AUState):
        Lt, R = state.Lt, state.R
        a = self.annealing_rate.astype(Lt.dtype)
        tau_k = (1 - a) * state.tau_k + a
        Lt_new, L_step = self.half_step(half_problem_L(problem, Lt, R), Lt, tau_k)
        hp_R = half_problem_R(problem, Lt_new, R)
        R_new, R_step = self.half_step(hp_R, R, tau_k)
        objective = objective_after_R_step(problem, hp_R, Lt_new, R_new)
        # rnnmf snaps tiny values to zero only after both half steps.
        zt = self.zero_tolerance.astype(Lt.dtype)
        Lt_new = jnp.where(Lt_new <= zt, 0.0, Lt_new)
        R_new = jnp.where(R_new <= zt, 0.0, R_new)
        info = StepInfo(jnp.stack([L_step, R_step]), objective, jnp.zeros((), bool))
        return AUState(Lt_new, R_new, tau_k), info
