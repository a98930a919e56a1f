"""jnmf: regularized non-negative matrix factorization as composable JAX functions.

Layers (each imports only those below it): problem -> quadratic -> rules ->
driver -> implicit -> batch -> surfaces (``fit``, ``sweep``, ``consensus``, ``programs``,
the rnnmf front doors, the CLI).  The top level holds what users call; building blocks stay in their
modules (:mod:`jnmf.problem`, :mod:`jnmf.quadratic`, :mod:`jnmf.rules`,
:mod:`jnmf.driver`, :mod:`jnmf.batch`, :mod:`jnmf.init`).

``jnmf.NMF`` is the scikit-learn drop-in estimator (:mod:`jnmf.estimator`); it is
imported on first use, so ``import jnmf`` works without scikit-learn.
"""

from .compile_cache import enable_compile_cache
from .consensus import Consensus, consensus
from .cross_validation import RankCV, cross_validate_rank
from .datasets import load_golub, load_orl_faces
from .driver import STATUS, Result, Stopping, iterate
from .fitting import ConvergenceWarning, FitResult, SweepResult, fit, sweep
from .giqpm import GIQPM
from .implicit import differentiable_fit
from .problem import Problem, build_problem
from .programs import Programs, ProgramsAtRank, programs
from .result_files import load
from .rnnmf import aurnmf, gaurnmf, giqpm, murnmf, objective
from .rules import ANLS, AURNMF, HALS, KLMU, METHODS, MURNMF, BetaMU, ProjectedGradient, make_rule


def __getattr__(name: str):
    """``jnmf.NMF``, imported on first use (it needs scikit-learn, an optional dependency)."""
    if name == "NMF":
        try:
            from .estimator import NMF
        except ImportError as e:
            raise ImportError(
                f"jnmf.NMF (the scikit-learn drop-in estimator) needs scikit-learn "
                f"(pip install scikit-learn): {e}"
            ) from e
        return NMF
    raise AttributeError(f"module 'jnmf' has no attribute {name!r}")


__all__ = [
    # surfaces
    "fit",
    "sweep",
    "differentiable_fit",
    "consensus",
    "programs",
    "cross_validate_rank",
    "RankCV",
    "load_golub",
    "load_orl_faces",
    # keeping results and compiled programs
    "load",
    "enable_compile_cache",
    # rnnmf front doors (Pav 2024)
    "murnmf",
    "aurnmf",
    "gaurnmf",
    "giqpm",
    "objective",
    # the problem, rules and driver
    "Problem",
    "build_problem",
    "METHODS",
    "make_rule",
    "HALS",
    "MURNMF",
    "AURNMF",
    "ANLS",
    "KLMU",
    "BetaMU",
    "ProjectedGradient",
    "GIQPM",
    "iterate",
    "Stopping",
    "STATUS",
    # results and warnings
    "Result",
    "FitResult",
    "SweepResult",
    "Consensus",
    "Programs",
    "ProgramsAtRank",
    "ConvergenceWarning",
]
__version__ = "0.2.0"
