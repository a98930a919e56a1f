"""MURNMF, the multiplicative update of Pav (2024), Algorithm 1 (eqs. 14-19).

With no penalties it is the Lee-Seung update (eq. 2), so it also serves as
jnmf's ``method="mu"``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from ..problem import Problem
from ..quadratic import HalfProblem, half_problem_L, half_problem_R, objective_after_R_step
from .base import NMFState, Rule, StepInfo, as_setting, max_abs


def murnmf_half_step(hp: HalfProblem, Xt: Array, epsilon: Array) -> tuple[Array, Array]:
    """One multiplicative step X <- -X (.) (d ^ -eps) (/) (G X)  (eqs. 12, 14, 19).

    The numerator d is clipped to at most ``-epsilon`` (eq. 19) so the iterate stays
    positive whatever the L1 weights; elements whose denominator G X is not
    positive (or is NaN) are left unchanged, as in rnnmf.  Works on the
    factor-major unknown; returns the new Xt and the mask of updated elements.
    """
    numerator = jnp.minimum(hp.linear, -epsilon)
    denominator = hp.apply_G(Xt)
    ok = denominator > 0
    X_new = jnp.where(ok, -Xt * numerator / jnp.where(ok, denominator, 1.0), Xt)
    return X_new, ok


class MURNMF(Rule):
    """Algorithm 1: alternate multiplicative half steps on L, then R.

    Theorem 2.3: each half step does not increase phi when d <= 0; the clipping
    of eq. 19 means the rule may not solve the stated problem when L1 weights
    are large (an element that reaches zero stays zero).
    """

    epsilon: Array

    def __init__(self, epsilon=1e-7):
        self.epsilon = as_setting(epsilon)

    def step(self, problem: Problem, state: NMFState):
        Lt, R = state.Lt, state.R
        eps = self.epsilon.astype(Lt.dtype)
        Lt_new, _ = murnmf_half_step(half_problem_L(problem, Lt, R), Lt, eps)
        hp_R = half_problem_R(problem, Lt_new, R)
        R_new, ok_R = murnmf_half_step(hp_R, R, eps)
        info = StepInfo(
            steps=jnp.stack([max_abs(Lt_new - Lt), max_abs(R_new - R)]),
            objective=objective_after_R_step(problem, hp_R, Lt_new, R_new),
            stuck=~jnp.any(ok_R),
        )
        return NMFState(Lt_new, R_new), info
