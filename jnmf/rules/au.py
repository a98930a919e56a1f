"""AURNMF / GAURNMF, the additive update of Pav (2024), Algorithms 2-3.

The Lee-Seung direction is used as the direction of an additive step whose
length is the exact minimizer along it (eq. 24), capped by a fraction tau_k of
the longest feasible step (Lemma 3.1), with ``tau_k`` annealed towards 1:
``tau_k = (1 - annealing_rate) tau_{k-1} + annealing_rate``.  The step primitives
(direction, step lengths, annealing, zero snapping) are shared with GIQPM
(:mod:`jnmf.giqpm`) and live in :mod:`jnmf.quadratic`.

Difference from rnnmf 0.3.0: in ``aurnmf`` rnnmf's K = G H (the curvature term of
eq. 24) omits the non-orthogonality term ``gamma (11' - I)``, so with gamma > 0 its
"optimal" step is not optimal and can overshoot.  Here K is the full ``G H``
(every quadratic term of the half-step objective), which is what ``gaurnmf``
already does; with gamma = 0 the iterates are identical to rnnmf's.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array

from ..compile_options import CHEAP_OPTIONS
from ..problem import Problem
from ..quadratic import HalfProblem, anneal, giqpm_step, objective_after_R_step, pick_direction, snap_zeros
from .base import AlternatingRule, HalfStep, as_setting


class AURNMF(AlternatingRule):
    """Algorithm 3 on the general problem of eq. 3 (rnnmf's aurnmf and gaurnmf).

    ``NMFState.aux`` holds ``tau_k``, annealed once per iteration and used by both half
    steps.  Supports every term of eq. 3.

    Attributes:
        tau: the starting step fraction tau_0 in (0, 1).
        annealing_rate: the rate at which tau_k tends to 1.
        zero_tolerance: values at or below it are set to zero after each iteration.
        check_optimal_step: cap the step at the exact minimizer along the direction (eq. 24).
    """

    method_name: ClassVar[str] = "au"
    # a small problem's loop: the cheapest compile (jnmf.compile_options.SMALL_LOOP_ENTRIES)
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    tau: Array
    annealing_rate: Array
    zero_tolerance: Array
    check_optimal_step: bool = eqx.field(static=True)

    def __init__(self, tau=0.1, annealing_rate=0.01, check_optimal_step=True, zero_tolerance=1e-12):
        self.tau = as_setting(tau)
        self.annealing_rate = as_setting(annealing_rate)
        self.zero_tolerance = as_setting(zero_tolerance)
        self.check_optimal_step = bool(check_optimal_step)

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> Array:
        return self.tau.astype(Lt.dtype)

    def begin_iteration(self, tau_k: Array) -> Array:
        return anneal(tau_k, self.annealing_rate.astype(tau_k.dtype))

    def half_step(self, hp: HalfProblem, Xt: Array, tau_k: Array, side: str) -> HalfStep:
        GX = hp.apply_G(Xt)
        grad = GX + hp.linear
        H = pick_direction(Xt, grad, GX)
        GH = hp.apply_G(H) if self.check_optimal_step else None
        X, step = giqpm_step(Xt, grad, H, GH, tau_k)
        return HalfStep(X, tau_k, step=step)

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, tau_k: Array):
        objective = objective_after_R_step(problem, hp_R, Lt, R)
        # rnnmf snaps tiny values to zero only after both half steps.
        zt = self.zero_tolerance.astype(Lt.dtype)
        return snap_zeros(Lt, zt), snap_zeros(R, zt), tau_k, objective
