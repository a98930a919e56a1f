"""jnmf: regularized non-negative matrix factorization as composable JAX functions.

Layers (each imports only those below it): problem -> quadratic -> rules ->
driver -> batch -> surfaces (rnnmf-compatible functions, fit, estimator, CLI).
"""

from .batch import run_grid, run_restarts, with_scalar_penalties
from .consensus import Consensus, consensus, cophenetic_correlation
from .datasets import load_golub
from .driver import Result, iterate
from .fitting import METHODS, FitResult, SweepResult, fit, make_rule, sweep
from .init import initialize, nndsvd, nndsvda, nndsvdar, random_init, sparse_random_init
from .problem import Problem
from .quadratic import HalfProblem, VectorQP, half_problem_L, half_problem_R
from .rnnmf import aurnmf, build_problem, gaurnmf, giqpm, murnmf, objective
from .weights import Weight

__all__ = [
    "METHODS",
    "Consensus",
    "FitResult",
    "SweepResult",
    "consensus",
    "cophenetic_correlation",
    "fit",
    "initialize",
    "load_golub",
    "make_rule",
    "nndsvd",
    "nndsvda",
    "nndsvdar",
    "random_init",
    "run_grid",
    "run_restarts",
    "sparse_random_init",
    "sweep",
    "with_scalar_penalties",
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
