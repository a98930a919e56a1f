"""Update rules (layer 3): one file per rule, each an :class:`AlternatingRule`.

:data:`METHODS` is the registry of method names that ``fit``, ``sweep``, the
estimator and the CLI accept; :func:`make_rule` turns a name (or a rule, or an optax
optimizer) into a rule.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

from .._validate import device_cached
from ..names import DEFAULT_METHOD, METHOD_DESCRIPTIONS
from .anls import ANLS
from .au import AURNMF
from .base import AlternatingRule, HalfStep, NMFState, Rule, StepInfo
from .beta import BetaMU
from .hals import HALS
from .kl import KLMU
from .mu import MURNMF
from .projected import ProjectedGradient
from .wrapped import WrappedRule

if TYPE_CHECKING:
    import optax

# accelerated HALS's sweep share (HALS's ``alpha``) for method "ahals", which extrapolates.
# With extrapolation, to relative error 0.1755 on ORL (rank 25) alpha 0.2 / 0.3 / 0.5 took
# 22 / 20 / 17 iterations and 0.37 / 0.33 / 0.34 s of CPU; on a random 2000 x 1000 rank-20
# matrix 92 / 97 / 93 iterations, 0.56 / 0.54 / 0.61 s (experiments/tune_ahals_alpha.py,
# 2026-12-04, load average 13-24): flat within the noise, so 0.2, the fewest sweeps (which
# run single-threaded and fit by fit in batched restarts, where the products are stacked).
AHALS_ALPHA = 0.2


@functools.cache
def _default_pg() -> ProjectedGradient:
    """One shared instance: an optax optimizer is a static field, and two adam() objects
    never compare equal, so a fresh one per call would recompile every fit.  Built on
    first use: optax's import (0.35 s) is not paid by fits that do not use it."""
    import optax

    return ProjectedGradient(optax.adam(1e-2))


# name -> (description, factory); the names and descriptions live in jnmf.names, which the
# command line reads without importing JAX
_FACTORIES: dict[str, object] = {
    "ahals": lambda: HALS(inner_sweeps=None, alpha=AHALS_ALPHA, extrapolate="auto"),
    "ahals-plain": lambda: HALS(inner_sweeps=None),
    "hals": lambda: HALS(inner_sweeps=1),
    "mu": MURNMF,
    "au": AURNMF,
    "anls": ANLS,
    "kl": KLMU,
    "beta": lambda: BetaMU(1.5),
    "pg": _default_pg,
}
METHODS: dict[str, tuple[str, object]] = {
    name: (description, _FACTORIES[name]) for name, description in METHOD_DESCRIPTIONS.items()
}


def make_rule(method: str | AlternatingRule | optax.GradientTransformation) -> AlternatingRule:
    """A rule from a method name in :data:`METHODS`, a rule, or an optax optimizer.

    Args:
        method: ``"ahals"``, ``"ahals-plain"``, ``"hals"``, ``"mu"``, ``"au"``, ``"anls"``, ``"kl"``,
            ``"beta"``, ``"pg"``; an :class:`AlternatingRule` (returned as is); or an optax
            optimizer (projected gradient with it).

    Returns:
        The rule.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(method, AlternatingRule):
        return method
    optax = sys.modules.get("optax")  # an optax optimizer means optax is imported already
    if optax is not None and isinstance(method, optax.GradientTransformation):
        return ProjectedGradient(method)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"method must be one of {sorted(METHODS)}, a jnmf rule or an optax optimizer; got {method!r}"
        )
    # one rule per name (a rule is immutable): building one puts its settings on the device
    # and a fit's settings record its repr, both of which a fit paid every time; per x64 mode
    # and default device, which decide its settings' arrays
    return device_cached(_NAMED_RULES, method, METHODS[method][1], 64)


_NAMED_RULES: dict = {}


__all__ = [
    "AHALS_ALPHA",
    "ANLS",
    "AURNMF",
    "AlternatingRule",
    "BetaMU",
    "DEFAULT_METHOD",
    "HALS",
    "HalfStep",
    "KLMU",
    "METHODS",
    "MURNMF",
    "NMFState",
    "ProjectedGradient",
    "Rule",
    "StepInfo",
    "WrappedRule",
    "make_rule",
]
