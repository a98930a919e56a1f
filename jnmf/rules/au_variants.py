"""Variants of the AU half step that Pav (2024) leaves open (section 3.1 and the end of
section 3), as rules for measuring them (experiments/giqpm_open_question.py).

:class:`AUVariant` is AURNMF (Algorithm 3) with a choice of direction and of how many
GIQPM steps each half step takes; :class:`ActiveSetCG` replaces the half step by a few
steps of conjugate gradient on the current face of the non-negative orthant.

Directions of :class:`AUVariant` (``direction=``), each a descent direction that is
zero exactly at a KKT point of the half problem (eq. 10):

* ``"lee_seung"``: PICK_DIRECTION of Algorithm 3, ``-grad (.) x (/) Gx`` with
  ``max(-grad, 0)`` on zero elements.  With ``inner_steps=1`` this is AURNMF.
* ``"diagonal_newton"``: ``h = (x - grad (/) diag G)^+ - x``, a Jacobi step on the
  diagonal of G, projected on the orthant.  Section 3.1 proposes plugging
  ``b = (x + Diag(diag G)^-1 d)^+`` into Lemma 2.2 by analogy with eq. 25, where
  ``x - b`` is the Newton point ``-G^-1 d``; with ``G`` replaced by its diagonal in the
  Newton step ``x - G^-1 grad`` (not in ``G^-1 d``, whose fixed point ignores the
  coupling) and projected, one gets this direction.  Every element with
  ``h_i = -x_i`` has ``grad_i > x_i G_ii >= 0``, so ``<grad, h> <= 0``.
* ``"lemma22_diagonal"``: the paper's formula read literally: the step of Lemma 2.2,
  ``h = -b (.) grad (/) (G b)``, with ``b = (x + d (/) diag G)^+``; elements where
  ``b = 0`` do not move, except zero elements with a negative gradient, which take
  ``max(-grad, 0)`` as in PICK_DIRECTION.
* ``"complementarity"``: ``-grad (.) x`` (the Lee-Seung direction without its
  denominator, the paper's closing question of section 3.1), with PICK_DIRECTION's
  rule for zero elements.

``inner_steps > 1`` repeats the GIQPM step on the same half problem (the subproblem's
products with the data are computed once), as the end of section 3 suggests for
conjugate gradient.

Every step keeps the GIQPM step length of Algorithm 2: the exact minimizer along the
direction (eq. 24), capped by ``tau_k`` times the longest feasible step, so each step
decreases phi (Lemma 3.1's argument holds for any descent direction).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..compile_options import CHEAP_OPTIONS
from ..problem import Problem
from ..quadratic import (
    HalfProblem,
    anneal,
    giqpm_step,
    max_abs,
    max_feasible_step,
    objective_after_R_step,
    optimal_step_length,
    pick_direction,
    positive_or_one,
    snap_zeros,
)
from .base import AlternatingRule, HalfStep, as_setting


def diagonal_newton_direction(hp: HalfProblem, X: Array, grad: Array) -> Array:
    """h = (x - grad (/) diag G)^+ - x; a coordinate without curvature uses 1 (still a
    descent direction: the argument in the module docstring holds for any positive scale).

    Args:
        hp: the half problem (Pav 2024, eqs. 6-9).
        X: the current factor-major unknown.
        grad: ``G X + d`` at X.

    Returns:
        The direction, shaped like X.
    """
    curvature = positive_or_one(hp.diagonal())
    return jnp.maximum(X - grad / curvature, 0.0) - X


def lemma22_diagonal_direction(hp: HalfProblem, X: Array, grad: Array) -> Array:
    """Lemma 2.2's step with b = (x + d (/) diag G)^+, read literally from section 3.1.

    Args:
        hp: the half problem (Pav 2024, eqs. 6-9).
        X: the current factor-major unknown.
        grad: ``G X + d`` at X.

    Returns:
        The direction, shaped like X.
    """
    curvature = positive_or_one(hp.diagonal())
    b = jnp.maximum(X + hp.linear / curvature, 0.0)
    Gb = hp.apply_G(b)
    h = -b * grad / positive_or_one(Gb)
    return jnp.where((X <= 0) & (b <= 0), jnp.maximum(-grad, 0.0), h)


def complementarity_direction(X: Array, grad: Array) -> Array:
    """h = -grad (.) x, with max(-grad, 0) on zero elements (PICK_DIRECTION's rule).

    Args:
        X: the current factor-major unknown.
        grad: ``G X + d`` at X.

    Returns:
        The direction, shaped like X.
    """
    return jnp.where(X <= 0, jnp.maximum(-grad, 0.0), -grad * X)


DIRECTIONS = ("lee_seung", "diagonal_newton", "lemma22_diagonal", "complementarity")


def variant_direction(name: str, hp: HalfProblem, X: Array, grad: Array, GX: Array) -> Array:
    """The direction ``name`` (one of :data:`DIRECTIONS`) at X.

    Args:
        name: the direction's name.
        hp: the half problem.
        X: the current factor-major unknown.
        grad: ``G X + d`` at X.
        GX: ``G X`` (the Lee-Seung direction's denominator).

    Returns:
        The direction, shaped like X.
    """
    if name == "lee_seung":
        return pick_direction(X, grad, GX)
    if name == "diagonal_newton":
        return diagonal_newton_direction(hp, X, grad)
    if name == "lemma22_diagonal":
        return lemma22_diagonal_direction(hp, X, grad)
    return complementarity_direction(X, grad)


class AUVariant(AlternatingRule):
    """Algorithm 3 with another direction and/or several GIQPM steps per half step.

    ``NMFState.aux`` holds ``tau_k`` as in AURNMF (annealed once per iteration, shared by
    every inner step), and tiny values are snapped to zero after each iteration.

    Attributes:
        direction: one of :data:`DIRECTIONS` (static).
        inner_steps: GIQPM steps per half step (static).
        tau, annealing_rate, zero_tolerance: as :class:`~jnmf.rules.AURNMF`.
    """

    method_name: ClassVar[str] = "au_variant"
    # as AURNMF's (whose step it shares; the default variant follows its iterates exactly)
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    tau: Array
    annealing_rate: Array
    zero_tolerance: Array
    direction: str = eqx.field(static=True)
    inner_steps: int = eqx.field(static=True)

    def __init__(
        self, direction="lee_seung", inner_steps=1, tau=0.1, annealing_rate=0.01, zero_tolerance=1e-12
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
        if int(inner_steps) < 1:
            raise ValueError(f"inner_steps must be at least 1; got {inner_steps!r}")
        self.direction = direction
        self.inner_steps = int(inner_steps)
        self.tau = as_setting(tau)
        self.annealing_rate = as_setting(annealing_rate)
        self.zero_tolerance = as_setting(zero_tolerance)

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> Array:
        return self.tau.astype(Lt.dtype)

    def begin_iteration(self, tau_k: Array) -> Array:
        return anneal(tau_k, self.annealing_rate.astype(tau_k.dtype))

    def giqpm_step(self, hp: HalfProblem, X: Array, tau_k: Array) -> Array:
        GX = hp.apply_G(X)
        grad = GX + hp.linear
        H = variant_direction(self.direction, hp, X, grad, GX)
        X_new, _ = giqpm_step(X, grad, H, hp.apply_G(H), tau_k)
        return X_new

    def half_step(self, hp: HalfProblem, Xt: Array, tau_k: Array, side: str) -> HalfStep:
        if self.inner_steps == 1:
            X = self.giqpm_step(hp, Xt, tau_k)
        else:
            X = jax.lax.fori_loop(0, self.inner_steps, lambda _, X: self.giqpm_step(hp, X, tau_k), Xt)
        return HalfStep(X, tau_k, step=max_abs(X - Xt))

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, tau_k: Array):
        objective = objective_after_R_step(problem, hp_R, Lt, R)
        zt = self.zero_tolerance.astype(Lt.dtype)
        return snap_zeros(Lt, zt), snap_zeros(R, zt), tau_k, objective


class ActiveSetCG(AlternatingRule):
    """A half step of ``cg_steps`` steps of conjugate gradient on the current face.

    The end of section 3 of Pav (2024) suggests swapping the GIQPM half step for "a
    constrained conjugate gradient" (Li 2013; Nocedal & Wright 2006), taking several
    steps per half step.  This is the classical active-set form (Polyak 1969): the free
    set is ``{x > 0} union {x = 0, grad < 0}``; on it the direction is the projected
    negative gradient plus Fletcher-Reeves' ``beta`` times the previous direction,
    restarted (``beta = 0``) whenever the free set changes.  The step is the exact
    minimizer along the direction (eq. 24) capped by the longest feasible step, not a
    fraction of it: an element that meets the boundary is set to exactly zero, which is
    how the method identifies the active set.  Each step decreases phi; on a face that
    stays fixed, the steps are conjugate-gradient steps of the face's unconstrained
    quadratic.

    With ``projected_search`` (the default) each step also tries the uncapped minimizer
    projected on the orthant, ``max(x + alpha* p, 0)``, and keeps whichever of the two
    points has the lower phi (a projected search in the spirit of Moré & Toraldo 1991).
    Without it, one element meeting the boundary caps the step of every element, and
    only one constraint joins the active set per step: on ORL faces (a 20 x 10304
    unknown) the plain active-set form was still at relative error 0.40 after 300
    iterations where AU was at 0.19.

    Attributes:
        cg_steps: conjugate-gradient steps per half step (static).
        projected_search: also try the projected uncapped step (static).
    """

    method_name: ClassVar[str] = "au_cg"
    cg_steps: int = eqx.field(static=True)
    projected_search: bool = eqx.field(static=True)

    def __init__(self, cg_steps=4, projected_search=True):
        if int(cg_steps) < 1:
            raise ValueError(f"cg_steps must be at least 1; got {cg_steps!r}")
        self.cg_steps = int(cg_steps)
        self.projected_search = bool(projected_search)

    def half_step(self, hp: HalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        def cg_step(_, carry):
            X, grad, P, free_before, rr_before = carry
            free = (X > 0) | (grad < 0)
            residual = jnp.where(free, -grad, 0.0)
            rr = jnp.sum(residual * residual)
            same_face = jnp.all(free == free_before) & (rr_before > 0)
            beta = jnp.where(same_face, rr / jnp.where(rr_before > 0, rr_before, 1.0), 0.0)
            P = residual + beta * P
            # guard: after a restart or in rounding, fall back to the projected gradient
            P = jnp.where(jnp.sum(grad * P) < 0, P, residual)
            GP = hp.apply_G(P)
            moves = jnp.any(P != 0)
            ratio = jnp.where(P < 0, -X / jnp.where(P < 0, P, -1.0), jnp.inf)
            alpha_star = optimal_step_length(grad, P, GP)
            alpha = jnp.minimum(alpha_star, max_feasible_step(X, P))
            alpha = jnp.where(jnp.isfinite(alpha) & moves, alpha, 0.0).astype(X.dtype)
            # the elements that meet the boundary are set to exactly zero (rounding aside)
            X_capped = jnp.where((P < 0) & (ratio <= alpha), 0.0, jnp.maximum(X + alpha * P, 0.0))
            GX = hp.apply_G(X_capped)
            if self.projected_search:
                alpha_star = jnp.where(jnp.isfinite(alpha_star) & moves, alpha_star, 0.0).astype(X.dtype)
                X_projected = jnp.maximum(X + alpha_star * P, 0.0)
                GX_projected = hp.apply_G(X_projected)

                def value(Z, GZ):
                    return 0.5 * jnp.sum(Z * GZ) + jnp.sum(hp.linear * Z)

                better = value(X_projected, GX_projected) < value(X_capped, GX)
                X_capped = jnp.where(better, X_projected, X_capped)
                GX = jnp.where(better, GX_projected, GX)
            return X_capped, GX + hp.linear, P, free, rr

        start = (Xt, hp.gradient(Xt), jnp.zeros_like(Xt), jnp.zeros(Xt.shape, bool), jnp.zeros((), Xt.dtype))
        X = jax.lax.fori_loop(0, self.cg_steps, cg_step, start)[0]
        return HalfStep(X, aux, step=max_abs(X - Xt))
