"""jnmf: regularized non-negative matrix factorization as composable JAX functions.

Layers (each imports only those below it): problem -> quadratic -> rules ->
driver -> batch -> surfaces (rnnmf-compatible functions, fit, estimator, CLI).
"""

from .driver import Result, iterate
from .problem import Problem
from .quadratic import HalfProblem, VectorQP, half_problem_L, half_problem_R
from .rnnmf import aurnmf, build_problem, gaurnmf, giqpm, murnmf, objective
from .weights import Weight

__all__ = [
    "HalfProblem",
    "Problem",
    "Result",
    "VectorQP",
    "Weight",
    "aurnmf",
    "build_problem",
    "gaurnmf",
    "giqpm",
    "half_problem_L",
    "half_problem_R",
    "iterate",
    "murnmf",
    "objective",
]
__version__ = "0.1.0"
