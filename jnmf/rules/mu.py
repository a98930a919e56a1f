"""MURNMF, the multiplicative update of Pav (2024), Algorithm 1 (eqs. 14-19).

With no penalties it is the Lee-Seung update (eq. 2), so it also serves as
jnmf's ``method="mu"``.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array

from ..compile_options import CHEAP_OPTIONS
from ..quadratic import HalfProblem, positive_or_one
from .base import AlternatingRule, HalfStep, as_setting


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
    return jnp.where(ok, -Xt * numerator / positive_or_one(denominator), Xt), ok


class MURNMF(AlternatingRule):
    """Algorithm 1: alternate multiplicative half steps on L, then R.

    Theorem 2.3: each half step does not increase phi when d <= 0; the clipping
    of eq. 19 means the rule may not solve the stated problem when L1 weights
    are large (an element that reaches zero stays zero).  Supports every term of eq. 3.

    Attributes:
        epsilon: the clipping level of eq. 19 (units of d).
    """

    method_name: ClassVar[str] = "mu"
    # a small problem's loop: the cheapest compile (jnmf.compile_options.SMALL_LOOP_ENTRIES)
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    epsilon: Array

    def __init__(self, epsilon=1e-7):
        self.epsilon = as_setting(epsilon)

    def half_step(self, hp: HalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        X, ok = murnmf_half_step(hp, Xt, self.epsilon.astype(Xt.dtype))
        return HalfStep(X, aux, stuck=~jnp.any(ok))
